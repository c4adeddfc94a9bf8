"""The readable reference: one model, a plain PyTorch loop (autograd + torch.optim.Adam).

It trains `kit.train.model.Regressor` and draws from the model's generator exactly as the batched
trainer does (init, per-epoch shuffle, per-step dropout masks), so for the same key it trains the
same model up to float rounding. Tests use it to prove the batched trainer right; the benchmark uses
it as the "best plain loop".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kit.train.batched import model_rng
from kit.train.config import TrainConfig
from kit.train.model import HIDDEN_LAYERS, Weights, init_params


def dropout_masks(rng: np.random.Generator, config: TrainConfig) -> list[torch.Tensor]:
    """One step's keep-masks (scaled), one per hidden layer, drawn like batched.Trainer draws them."""
    B, H = config.batch_size, config.hidden
    width = HIDDEN_LAYERS * H
    if config.dropout == 0:
        return [torch.ones(B, H) for _ in range(HIDDEN_LAYERS)]
    threshold = round(config.dropout * 65536)
    scale = np.float32(1.0 / (1.0 - threshold / 65536))
    u64 = -(-(B * width * 2) // 8)
    u16 = rng.bit_generator.random_raw(u64).view(np.uint16)[: B * width].reshape(B, width)
    mask = torch.from_numpy(((u16 >= threshold) * scale).astype(np.float32))
    return [mask[:, k * H : (k + 1) * H] for k in range(HIDDEN_LAYERS)]


def train_one(x: np.ndarray, y: np.ndarray, config: TrainConfig, key: tuple[int, ...]) -> Weights:
    """Train one regressor on standardised inputs x [n, n_in] and target y [n]."""
    rng = model_rng(key)
    model = Weights(init_params(rng, x.shape[1], config.hidden)).to_module(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                           eps=config.eps, weight_decay=config.weight_decay)
    X, Y = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    B = config.batch_size
    for _ in range(config.epochs):
        perm = torch.from_numpy(rng.permutation(len(X)))
        for start in range(0, len(X), B):
            idx = perm[start : start + B]
            loss = F.mse_loss(model.forward_masked(X[idx], dropout_masks(rng, config)), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return Weights.from_module(model)
