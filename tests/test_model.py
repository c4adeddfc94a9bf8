"""The network: one definition (model.py) for the batched trainer, the plain loop and the exporter; the
hand-written backward equals autograd; torch's private kernels equal their public fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kit.train import kernels
from kit.train.batched import StackedMLP, stacked_gradients
from kit.train.config import TrainConfig
from kit.train.model import (
    HIDDEN_LAYERS,
    PARAMS,
    ForkMember,
    Weights,
    init_params,
    param_shapes,
    stacked_forward,
)

M, B, N_IN, H = 3, 16, 22, 8


def _stacked_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {k: torch.from_numpy(rng.uniform(-0.6, 0.6, (M, *shape)).astype(np.float32))
              for k, shape in param_shapes(N_IN, H).items()}
    x = torch.from_numpy(rng.standard_normal((M, B, N_IN)).astype(np.float32))
    y = torch.from_numpy((3 * rng.standard_normal((M, B, 1)) + 50).astype(np.float32))
    masks = [torch.from_numpy(((rng.uniform(size=(M, B, H)) >= 0.1) / 0.9).astype(np.float32))
             for _ in range(HIDDEN_LAYERS)]
    gw = torch.zeros(M, B, 1)
    gw[:, :12] = 2.0 / 12  # 12 real rows, 4 rows of padding (loss weight 0), like a partial last batch
    return params, x, y, masks, gw


@pytest.mark.parametrize("private_gelu", [True, False], ids=["aten-gelu-backward", "erf-gelu-derivative"])
def test_hand_written_backward_equals_autograd_on_stacked_parameters(private_gelu, monkeypatch):
    monkeypatch.setattr(kernels, "PRIVATE_GELU_BACKWARD", private_gelu and kernels.PRIVATE_GELU_BACKWARD)
    params, x, y, masks, gw = _stacked_problem()
    hand = stacked_gradients(params, x, y, masks, gw)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out, _, _ = stacked_forward(leaves, x, masks)
    loss = 0.5 * (gw * (out - y) ** 2).sum()  # d/d(out) = gw * (out - y): each model's batch-mean MSE gradient
    auto = torch.autograd.grad(loss, [leaves[k] for k in PARAMS])
    for name, h, a in zip(PARAMS, hand, auto, strict=True):
        assert h.numel() == a.numel(), name  # biases come back [M, out]; the trainer flattens both per model
        torch.testing.assert_close(h.reshape(a.shape), a, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_erf_gelu_derivative_equals_aten_gelu_backward():
    if not kernels._gelu_backward_available():
        pytest.skip("this torch has no aten.gelu_backward")
    z = torch.linspace(-8, 8, 4001)
    grad = torch.randn(4001, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grad * kernels.gelu_derivative(z), torch.ops.aten.gelu_backward(grad, z),
                               rtol=1e-6, atol=1e-6)


def test_fused_adam_equals_the_vectorised_fallback(monkeypatch):
    """One training run per Adam implementation: the same models up to float rounding."""
    from kit.train.batched import Job, train_models

    if not kernels._fused_adam_available():
        pytest.skip("this torch has no fused CPU Adam")
    rng = np.random.default_rng(3)
    blocks = [(rng.standard_normal((n, N_IN)).astype(np.float32), rng.standard_normal(n).astype(np.float32))
              for n in (40, 70)]
    jobs = [Job(b, (s, b)) for s in (0, 1) for b in range(2)]
    config = TrainConfig(epochs=3, hidden=H, batch_size=16)
    monkeypatch.setattr(kernels, "FUSED_ADAM", True)
    fused = train_models(blocks, jobs, config).P.numpy().copy()
    monkeypatch.setattr(kernels, "FUSED_ADAM", False)
    vectorised = train_models(blocks, jobs, config).P.numpy()
    np.testing.assert_allclose(fused, vectorised, rtol=0, atol=1e-5)


def test_portable_switch_selects_every_public_fallback():
    code = "from kit.train import kernels as k; print(k.PORTABLE, k.FUSED_ADAM, k.PRIVATE_GELU_BACKWARD)"
    env = {**os.environ, "ENSEMBLE_KIT_PORTABLE_TORCH": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "False", "False"]


def test_one_definition_for_trainer_plain_loop_and_exporter():
    """The torch module (plain loop, export) and the stacked form (batched trainer) are the same network."""
    config = TrainConfig(hidden=H)
    inits = [init_params(np.random.default_rng(s), N_IN, H) for s in range(M)]
    assert all(list(p) == list(PARAMS) for p in inits)
    net = StackedMLP(inits, N_IN, H)
    x = torch.from_numpy(np.random.default_rng(9).standard_normal((M, 5, N_IN)).astype(np.float32))
    with torch.no_grad():
        stacked = net.forward(x)
        for m in range(M):
            weights = net.weights(m)
            module = weights.to_module(config)
            assert [tuple(p.shape) for p in module.parameters()] == [
                tuple(reversed(s)) if k.startswith("W") else (s[1],) for k, s in param_shapes(N_IN, H).items()]
            torch.testing.assert_close(module(x[m]), stacked[m], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(Weights.from_module(module).flat(), weights.flat())
            member = ForkMember(module)  # what export writes: the same network, the fork's two inputs
            assert [name for name, _ in member.named_parameters()][:2] == ["net.0.weight", "net.0.bias"]
            torch.testing.assert_close(member(x[m, :, :6], x[m, :, 6:]), stacked[m], rtol=1e-6, atol=1e-6)
