"""The regressor: the ONE definition of the network, used by the batched trainer, the plain reference
loop and the exporter.

MLP: [standardised features | codec block] -> HIDDEN_LAYERS x (Linear, exact GELU, Dropout) -> Linear
-> VMAF: the fork's FRRegressor (in_features 6, hidden 64, depth 2, dropout 0.1). Everything about its
shape comes from `layer_shapes`: the parameter names and shapes, their initialisation
(torch.nn.Linear's), the torch module that is trained alone (`Regressor`) and the exported member
(`ForkMember`: the fork's two inputs, no scaler inside), and the stacked form that trains many models at once
(`stacked_forward`, on parameters [M, ...]; its gradient is written out by hand in batched.py and
checked against autograd by the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kit.core.schema import FEATURES
from kit.train.config import TrainConfig

N_FEATURES = len(FEATURES)
HIDDEN_LAYERS = 2  # each `TrainConfig.hidden` wide


def layer_shapes(n_in: int, hidden: int) -> list[tuple[int, int]]:
    """(inputs, outputs) of each Linear layer, first to last."""
    return [(n_in, hidden), *[(hidden, hidden)] * (HIDDEN_LAYERS - 1), (hidden, 1)]


N_LAYERS = HIDDEN_LAYERS + 1
PARAMS: tuple[str, ...] = tuple(name for i in range(1, N_LAYERS + 1) for name in (f"W{i}", f"b{i}"))


def param_shapes(n_in: int, hidden: int) -> dict[str, tuple[int, int]]:
    """Each parameter's shape in the layout x @ W + b (W is [in, out], b is [1, out]), in PARAMS order."""
    out: dict[str, tuple[int, int]] = {}
    for i, (fan_in, fan_out) in enumerate(layer_shapes(n_in, hidden), start=1):
        out[f"W{i}"], out[f"b{i}"] = (fan_in, fan_out), (1, fan_out)
    return out


def init_params(rng: np.random.Generator, n_in: int, hidden: int) -> dict[str, np.ndarray]:
    """torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, drawn
    from the model's own generator in PARAMS order."""
    shapes = param_shapes(n_in, hidden)
    out = {}
    for i, (fan_in, _) in enumerate(layer_shapes(n_in, hidden), start=1):
        bound = 1.0 / math.sqrt(fan_in)
        for name in (f"W{i}", f"b{i}"):
            out[name] = rng.uniform(-bound, bound, size=shapes[name]).astype(np.float32)
    return out


def stacked_forward(p: Mapping[str, torch.Tensor], x: torch.Tensor, masks: Sequence[torch.Tensor] | None = None,
                    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """M models at once: x [M, B, n_in] -> (out [M, B, 1], pre-activations, activations of each hidden layer).

    `masks` (scaled dropout keep-masks [M, B, hidden], one per hidden layer) make it the training
    forward; without them it is the eval forward.
    """
    zs: list[torch.Tensor] = []
    acts: list[torch.Tensor] = []
    a = x
    for i in range(1, N_LAYERS):
        z = torch.baddbmm(p[f"b{i}"], a, p[f"W{i}"])
        a = F.gelu(z) if masks is None else F.gelu(z).mul_(masks[i - 1])
        zs.append(z)
        acts.append(a)
    return torch.baddbmm(p[f"b{N_LAYERS}"], a, p[f"W{N_LAYERS}"]), zs, acts


class Regressor(nn.Module):
    """One model as a plain torch module: what the reference loop trains and what gets exported."""

    def __init__(self, config: TrainConfig, n_inputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        shapes = layer_shapes(n_inputs, config.hidden)
        for fan_in, fan_out in shapes[:-1]:
            layers += [nn.Linear(fan_in, fan_out), nn.GELU(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(*shapes[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def forward_masked(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Training forward with the trainer's own dropout keep-masks (one per hidden layer) instead of
        nn.Dropout's, so the plain loop draws exactly what the batched trainer draws."""
        *hidden, last = self.linears()
        for lin, mask in zip(hidden, masks, strict=True):
            x = F.gelu(lin(x)) * mask[: len(x)]
        return last(x).squeeze(-1)


@dataclass
class Weights:
    """One model's parameters as numpy arrays keyed by PARAMS, layout x @ W + b (W is [in, out])."""

    params: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.params[name]

    def flat(self) -> np.ndarray:
        return np.concatenate([self.params[k].reshape(-1) for k in PARAMS])

    def to_module(self, config: TrainConfig) -> Regressor:
        model = Regressor(config, n_inputs=self.params["W1"].shape[0])
        with torch.no_grad():
            for i, lin in enumerate(model.linears(), start=1):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(self.params[f"W{i}"].T)))
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(self.params[f"b{i}"].reshape(-1))))
        return model.eval()

    @classmethod
    def from_module(cls, model: Regressor) -> Weights:
        params = {}
        for i, lin in enumerate(model.linears(), start=1):
            params[f"W{i}"] = lin.weight.detach().numpy().T.copy()
            params[f"b{i}"] = lin.bias.detach().numpy().copy()
        return cls(params)


class ForkMember(nn.Module):
    """What gets exported: the fork's member contract. `features` [N, 6] (already standardised by the
    caller with the sidecar's feature_mean/feature_std) and `codec_onehot` [N, K] in, `score` [N] out.

    No scaler in the graph, on purpose: the fork's consumers standardise before they feed, so a graph
    that standardised again would be silently wrong for them.
    """

    def __init__(self, regressor: Regressor) -> None:
        super().__init__()
        self.net = regressor.eval().net

    def forward(self, features: torch.Tensor, codec_onehot: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, codec_onehot], dim=-1)).squeeze(-1)
