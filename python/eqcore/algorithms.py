"""Gradient algorithms for J(theta) = mean over the batch of C(s0(theta)), s0 the free fixed point.

Every function returns a pair ``(list like net.weights, list like net.biases)`` estimating
``dJ/dtheta``; the loops over time steps and examples run in the kernel.

* :func:`ep_gradient`: Equilibrium Propagation (one-sided, random sign of beta, symmetric).
* :func:`rbp_gradient`: Recurrent Backpropagation, truncated after ``steps`` Euler steps.
* :func:`implicit_gradient`: the exact gradient by implicit differentiation (CG on H).
* :func:`bptt_gradient`: backpropagation through the free phase's Euler steps.
* :func:`fixed_point`: a free fixed point to high accuracy (Euler, then Newton-CG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from . import _core
from .network import Network, Params, StateLike

EPVariant = Literal["one-sided", "random-sign", "symmetric"]
EP_VARIANTS: tuple[str, ...] = ("one-sided", "random-sign", "symmetric")


class NotPositiveDefiniteError(ArithmeticError):
    """The Hessian of the energy is not positive definite at the given state."""


@dataclass(frozen=True)
class SolveInfo:
    """Conjugate-gradient statistics: largest iteration count and relative residual over the batch."""

    iterations: int
    residual: float


def _difference(a: Params, b: Params, scale: float) -> Params:
    """scale * (a - b), parameter-wise."""
    return tuple([scale * (p - q) for p, q in zip(pa, pb)] for pa, pb in zip(a, b))  # type: ignore[return-value]


def ep_gradient(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    free_state: StateLike,
    *,
    beta: float,
    steps: int,
    dt: float = 0.5,
    clip: Optional[bool] = None,
    variant: EPVariant = "one-sided",
    rng: Optional[np.random.Generator] = None,
) -> Params:
    """Equilibrium Propagation's estimate of ``dJ/dtheta``.

    From the free state ``s0``, nudged phases of ``steps`` Euler steps give ``s^beta``; then
    one-sided: ``(dE/dtheta(s^beta) - dE/dtheta(s0)) / beta``; ``random-sign``: the same with the
    sign of beta drawn from ``rng`` per call (Scellier & Bengio 2017); ``symmetric``:
    ``(dE/dtheta(s^+beta) - dE/dtheta(s^-beta)) / (2 beta)``, which removes the O(beta) bias.

    Parameters
    ----------
    x : (B, n_0) array
    target : (B, n_L) array
    free_state : list of (B, n_k) arrays, the free phase's end point s0
    beta : float, > 0 (its sign is set by ``variant``)
    steps : int, nudged-phase Euler steps (K)
    """
    if variant not in EP_VARIANTS:
        raise ValueError(f"variant: expected one of {EP_VARIANTS}, got {variant!r}")
    if not np.isfinite(beta) or beta == 0:
        raise ValueError(f"beta: expected a finite non-zero number, got {beta!r}")

    def nudged(b: float) -> list[np.ndarray]:
        return net.relax(x, state=free_state, target=target, beta=b, steps=steps, dt=dt, clip=clip)

    if variant == "symmetric":
        return _difference(net.energy_grad_params(x, nudged(beta)), net.energy_grad_params(x, nudged(-beta)),
                           1.0 / (2.0 * beta))
    if variant == "random-sign":
        if rng is None:
            raise ValueError("rng: a numpy Generator is required for variant='random-sign'")
        beta = beta if rng.random() < 0.5 else -beta
    return _difference(net.energy_grad_params(x, nudged(beta)), net.energy_grad_params(x, free_state), 1.0 / beta)
