"""The regressor the downstream consumers expect, as a plain torch module.

Training runs many of these at once on stacked weights (see batched.py); this module is the readable
definition, the unit of export, and what the plain reference loop trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kit.core.schema import FEATURES
from kit.train.config import TrainConfig
from kit.train.data import VOCAB

N_FEATURES = len(FEATURES)
N_CODEC = len(VOCAB) + 2  # one-hot vocab, preset_norm, cq_norm
N_INPUTS = N_FEATURES + N_CODEC


class Regressor(nn.Module):
    """MLP: [standardised features | codec block] -> 2 x (Linear, exact GELU, Dropout) -> Linear -> vmaf."""

    def __init__(self, config: TrainConfig, n_inputs: int = N_INPUTS) -> None:
        super().__init__()
        h = config.hidden
        self.net = nn.Sequential(
            nn.Linear(n_inputs, h), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(h, h), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(h, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class Weights:
    """One model's parameters as numpy arrays, layout x @ W + b (W is [in, out])."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    W3: np.ndarray
    b3: np.ndarray

    def to_module(self, config: TrainConfig) -> Regressor:
        model = Regressor(config, n_inputs=self.W1.shape[0])
        linears = [m for m in model.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, (w, b) in zip(linears, ((self.W1, self.b1), (self.W2, self.b2), (self.W3, self.b3)), strict=True):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b.reshape(-1))))
        return model.eval()

    @classmethod
    def from_module(cls, model: Regressor) -> Weights:
        lins = [m for m in model.net if isinstance(m, nn.Linear)]
        w = [(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()) for lin in lins]
        return cls(w[0][0], w[0][1], w[1][0], w[1][1], w[2][0], w[2][1])


class ScoringModel(nn.Module):
    """What gets exported: raw features + codec block in, score out, the fold's scaler baked in.

    Baking the scaler into the graph makes each ONNX file self-contained: a consumer feeds libvmaf's
    raw feature values; the sidecar still records mean/std for anyone who wants to check.
    """

    def __init__(self, regressor: Regressor, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.regressor = regressor.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1))

    def forward(self, features: torch.Tensor, codec_onehot: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(features - self.mean) / self.std, codec_onehot], dim=1)
        return self.regressor(x)
