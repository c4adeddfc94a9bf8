"""The two private torch kernels the batched trainer uses, each with a public fallback the tests exercise.

* `torch._fused_adam_`: one fused Adam kernel over many per-model parameter rows (torch >= 2.4). The
  fallback is the same update as vectorised tensor ops (`batched.Trainer._adam`).
* `torch.ops.aten.gelu_backward`: GELU's derivative. The fallback computes it from the erf formula,
  d/dz [z * Phi(z)] = Phi(z) + z * phi(z).

The private kernels are used when this torch has them (they are what the published numbers were
measured with, and faster); the fallbacks when it does not, or everywhere when
ENSEMBLE_KIT_PORTABLE_TORCH=1. Tests force either path by setting FUSED_ADAM / PRIVATE_GELU_BACKWARD.
The fallbacks train the same models up to float rounding, not bit for bit: compare runs made the same way.
"""

from __future__ import annotations

import math
import os

import torch

PORTABLE = os.environ.get("ENSEMBLE_KIT_PORTABLE_TORCH", "").lower() in ("1", "true", "yes")


def _fused_adam_available() -> bool:
    """torch's fused CPU Adam kernel exists here and takes the arguments the trainer passes."""
    if not hasattr(torch, "_fused_adam_"):
        return False
    try:
        p, g, a, b = (torch.zeros(4) for _ in range(4))
        torch._fused_adam_([p], [g], [a], [b], [], [torch.ones(())], lr=1e-3, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
        return True
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _gelu_backward_available() -> bool:
    try:
        torch.ops.aten.gelu_backward(torch.ones(2), torch.zeros(2))
        return True
    except (RuntimeError, AttributeError, NotImplementedError, TypeError):
        return False


FUSED_ADAM = not PORTABLE and _fused_adam_available()
PRIVATE_GELU_BACKWARD = not PORTABLE and _gelu_backward_available()

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    """d/dz of the exact (erf) GELU: Phi(z) + z * phi(z), from public ops only."""
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return cdf + z * pdf


def gelu_backward(grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """grad * GELU'(z): aten's kernel, or the erf formula (see module doc)."""
    if PRIVATE_GELU_BACKWARD:
        return torch.ops.aten.gelu_backward(grad, z)
    return grad * gelu_derivative(z)


def fused_adam(params: list[torch.Tensor], grads: list[torch.Tensor], m1: list[torch.Tensor], m2: list[torch.Tensor],
               steps: list[torch.Tensor], *, lr: float, beta1: float, beta2: float, weight_decay: float,
               eps: float) -> None:
    """torch.optim.Adam's update (L2 decay added to the gradient), one fused kernel over every row."""
    torch._fused_adam_(params, grads, m1, m2, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                       weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
