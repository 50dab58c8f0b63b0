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
from collections.abc import Sequence
from typing import Literal, Optional

import numpy as np

from . import _core
from .network import Dynamics, Network, Params, StateLike, _count, _dynamics, _flag, _real

EPVariant = Literal["one-sided", "random-sign", "symmetric"]
EP_VARIANTS: tuple[str, ...] = ("one-sided", "random-sign", "symmetric")


NotPositiveDefiniteError = _core.NotPositiveDefiniteError  # H not positive definite at the state


@dataclass(frozen=True)
class SolveInfo:
    """Conjugate-gradient statistics: largest iteration count and relative residual over the batch."""

    iterations: int
    residual: float


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
    beta = _nonzero_beta(beta, net.dtype)

    def nudged(b: float) -> list[np.ndarray]:
        return net.relax(x, state=free_state, target=target, beta=b, steps=steps, dt=dt, clip=clip)

    if variant == "symmetric":
        return _difference(net.energy_grad_params(x, nudged(beta)), net.energy_grad_params(x, nudged(-beta)),
                           1.0 / (2.0 * beta))
    if variant == "random-sign":
        beta = _random_sign(beta, rng)
    return _difference(net.energy_grad_params(x, nudged(beta)), net.energy_grad_params(x, free_state), 1.0 / beta)


def _difference(a: Params, b: Params, scale: float) -> Params:
    """scale * (a - b), parameter-wise; an overflow (scale = 1/beta, beta tiny) is an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = tuple([scale * (p - q) for p, q in zip(pa, pb)] for pa, pb in zip(a, b))
    if not all(np.isfinite(p).all() for group in out for p in group):
        raise OverflowError(f"ep_gradient: (dE/dtheta(s^beta) - dE/dtheta(s0)) / beta overflowed "
                            f"{out[0][0].dtype}: beta is too small (1/beta = {scale:.3g})")
    return out  # type: ignore[return-value]


def ep_train_step(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    state: list[np.ndarray],
    *,
    free_steps: int,
    nudged_steps: int,
    beta: float,
    learning_rates: Sequence[float],
    dt: float = 0.5,
    clip: Optional[bool] = None,
    variant: EPVariant = "one-sided",
    rng: Optional[np.random.Generator] = None,
    free_dynamics: Dynamics = "euler",
) -> float:
    """One EP training step in a single kernel call; returns the beta used (its sign may be random).

    The free phase runs ``free_steps`` from ``state``, which is overwritten with its end point s0
    (persistent particles); the nudged phase(s) run ``nudged_steps`` from s0; then, in place,
    ``theta -= learning_rates[k] * g`` with ``g`` :func:`ep_gradient`'s estimate (``learning_rates[k]``
    applies to ``W_k`` and ``b_{k+1}``). Equivalent to ``relax`` + :func:`ep_gradient` + update,
    but the input drive is computed once and no gradient array is materialised.

    Parameters
    ----------
    state : list of (B, n_k) arrays of the network's dtype, C-contiguous and writable
    free_dynamics : {"euler", "sweep"}
        ``sweep``: the free phase takes ``free_steps`` even/odd sweeps to each layer's minimiser
        (see :meth:`Network.relax`; hard sigmoid with clip) instead of Euler steps. The nudged
        phase always takes Euler steps.
    """
    if variant not in EP_VARIANTS:
        raise ValueError(f"variant: expected one of {EP_VARIANTS}, got {variant!r}")
    beta = _nonzero_beta(beta)
    if variant == "random-sign":
        beta = _random_sign(beta, rng)
    if isinstance(learning_rates, (str, bytes)) or not isinstance(learning_rates, (Sequence, np.ndarray)):
        raise TypeError(f"learning_rates: expected a sequence of {net.layers} numbers, got {learning_rates!r}")
    if clip is None:
        clip = net.activation == "hardsigmoid"
    _core.ep_step(
        *net._net(), net._x(x), state, net._target(target), _steps(free_steps, "free_steps"),
        _steps(nudged_steps, "nudged_steps"), _real(dt, "dt"), beta, _flag(clip, "clip"), variant == "symmetric",
        _dynamics(free_dynamics, "free_dynamics") == "sweep", [_real(v, "learning_rates") for v in learning_rates],
        net.threads,
    )
    return float(beta)


def _nonzero_beta(beta: object, dtype: Optional[np.dtype] = None) -> float:
    value = _real(beta, "beta")
    if not np.isfinite(value) or value == 0:
        raise ValueError(f"beta: expected a finite non-zero number, got {beta!r}")
    if dtype is not None and abs(value) < np.finfo(dtype).tiny:  # 1/beta would overflow dtype
        raise ValueError(f"beta: {value!r} is too small for {np.dtype(dtype).name} (|beta| >= "
                         f"{np.finfo(dtype).tiny:.3g} needed)")
    return value


def _random_sign(beta: float, rng: object) -> float:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: a numpy Generator is required for variant='random-sign', got {rng!r}")
    return beta if rng.random() < 0.5 else -beta


def _scaled(params: Params, scale: float) -> Params:
    return tuple([scale * p for p in group] for group in params)  # type: ignore[return-value]


def _output_error(net: Network, free_state: StateLike, target: np.ndarray) -> list[np.ndarray]:
    """dC/ds at the free state: s_L - y on the output layer, zero elsewhere."""
    layers = [np.zeros_like(np.asarray(a, dtype=net.dtype)) for a in free_state]
    layers[-1] = np.asarray(free_state[-1], dtype=net.dtype) - np.asarray(target, dtype=net.dtype)
    return layers


@dataclass(frozen=True)
class RBPResult:
    """Recurrent Backpropagation after ``steps`` steps.

    ``sbar``: Sbar_T per layer (B, n_k); ``gradient``: Thetabar_T (the RBP estimate of dJ/dtheta);
    ``trajectory``: with ``record=True``, per layer (steps + 1, B, n_k) holding Sbar_0..Sbar_T.
    """

    sbar: list[np.ndarray]
    gradient: Params
    steps: int
    trajectory: Optional[list[np.ndarray]]


def rbp(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    free_state: StateLike,
    *,
    steps: int,
    dt: float = 0.5,
    tol: Optional[float] = None,
    record: bool = False,
) -> RBPResult:
    """Recurrent Backpropagation (Eq. 8-11 of the paper) at the free fixed point ``s0``.

    ``Sbar_0 = dC/ds(s0)``, ``Thetabar_0 = dC/dtheta = 0``; then ``Sbar <- Sbar - dt H(s0) Sbar``,
    ``Thetabar <- Thetabar - dt (d2E/dtheta ds)(s0) Sbar``, for ``steps`` steps (truncated RBP),
    or until ``max |Sbar| < tol``. ``H`` is applied by Hessian-vector products in the kernel.
    """
    x = net._x(x)
    s0 = net._layers(free_state, "state")
    sbar, total, taken, trajectory = _core.rbp(
        *net._net(), x, s0, net._target(target), _steps(steps), _real(dt, "dt"), 0.0 if tol is None else _real(tol, "tol"),
        _flag(record, "record"), net.threads,
    )
    # Thetabar_T = -dt * mixed(s0, sum_{t<T} Sbar_t): the mixed product is linear in its direction.
    gradient = _scaled(net.mixed_hvp(x, s0, total), -float(dt))
    return RBPResult(sbar, gradient, taken, trajectory)


def rbp_gradient(
    net: Network, x: np.ndarray, target: np.ndarray, free_state: StateLike, *, steps: int, dt: float = 0.5
) -> Params:
    """Truncated RBP's estimate of ``dJ/dtheta`` after ``steps`` steps (see :func:`rbp`)."""
    return rbp(net, x, target, free_state, steps=steps, dt=dt).gradient


def solve_hessian(
    net: Network,
    x: np.ndarray,
    state: StateLike,
    rhs: StateLike,
    *,
    beta: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> tuple[list[np.ndarray], SolveInfo]:
    """``H^{-1} rhs`` per example by conjugate gradients on Hessian-vector products.

    Raises
    ------
    NotPositiveDefiniteError
        When ``H`` is not positive definite at ``state`` (not a stable fixed point).
    """
    z, iterations, residual = _core.solve_hessian(
        *net._net(), net._x(x), net._layers(state, "state"), net._layers(rhs, "rhs"), _real(beta, "beta"), _real(tol, "tol"),
        _steps(max_iter, "max_iter"), net.threads,
    )
    return z, SolveInfo(int(iterations), float(residual))


def implicit_gradient(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    free_state: StateLike,
    *,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> Params:
    """The exact gradient by implicit differentiation: ``-(d2E/dtheta ds) H^{-1} dC/ds`` at ``s0``."""
    x, free_state, target = net._x(x), net._layers(free_state, "free_state"), net._target(target)
    net.cost(free_state, target)  # checks every layer and the target (shapes, NaN) before numpy uses them
    z, _ = solve_hessian(net, x, free_state, _output_error(net, free_state, target), tol=tol, max_iter=max_iter)
    return _scaled(net.mixed_hvp(x, free_state, z), -1.0)


def bptt_gradient(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    *,
    steps: int,
    dt: float = 0.5,
    clip: Optional[bool] = None,
    state: Optional[StateLike] = None,
) -> Params:
    """Backpropagation through the free phase: the exact gradient of the mean cost after
    ``steps`` Euler steps from ``state`` (zeros by default)."""
    if clip is None:
        clip = net.activation == "hardsigmoid"
    s = None if state is None else net._layers(state, "state")
    return tuple(
        _core.bptt(*net._net(), net._x(x), s, net._target(target), _steps(steps), _real(dt, "dt"), _flag(clip, "clip"),
                   net.threads)
    )


@dataclass(frozen=True)
class FixedPoint:
    """A free fixed point: ``state`` with ``gradient_norm = max |dE/ds|`` after Euler and Newton steps."""

    state: list[np.ndarray]
    gradient_norm: float
    euler_steps: int
    newton_steps: int


def fixed_point(
    net: Network,
    x: np.ndarray,
    *,
    state: Optional[StateLike] = None,
    tol: float = 1e-12,
    dt: float = 0.5,
    max_euler_steps: int = 100_000,
    max_newton_steps: int = 20,
) -> FixedPoint:
    """Free fixed point with ``max |dE/ds| <= tol``: Euler relaxation (unclipped) to a loose
    tolerance, then Newton steps ``s <- s - H^{-1} dE/ds`` (CG on Hessian-vector products).

    Needs a twice-differentiable energy near the fixed point: the sigmoid, or the hard sigmoid
    with every unit strictly inside (0, 1). Float64 is needed for ``tol`` below ~1e-6.
    """
    x = net._x(x)
    tol = _real(tol, "tol")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected a finite number > 0, got {tol!r}")
    max_euler_steps = _count(max_euler_steps, "max_euler_steps")
    max_newton_steps = _count(max_newton_steps, "max_newton_steps")
    relaxed = net.relax(x, state=state, steps=max_euler_steps, dt=dt, clip=False, tol=min(1e-6, 1e3 * tol))
    s = list(relaxed)
    newton = 0
    while True:
        g = net.energy_grad_state(x, s)
        norm = max(float(np.abs(a).max()) for a in g)
        if norm <= tol or newton >= max_newton_steps:
            break
        delta, _ = solve_hessian(net, x, s, g, tol=1e-3 * tol / max(norm, tol), max_iter=10_000)
        s = [a - d for a, d in zip(s, delta)]
        newton += 1
    return FixedPoint(s, norm, relaxed.steps, newton)


def _steps(value: object, name: str = "steps") -> int:
    return _count(value, name)
