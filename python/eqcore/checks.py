"""Theorem 3 of the seed paper, checked on real numbers: along EP's nudged phase, the temporal
derivatives (Stilde_t, Thetatilde_t) equal RBP's error derivatives (Sbar_t, Thetabar_t).

With the same Euler scheme in both processes the identity holds at every step as beta -> 0,
so the measured gap is O(beta) for one-sided differences and O(beta^2) for symmetric ones,
until rounding (~ eps / beta) takes over. ``eqcore check`` prints the table and draws the figure.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import algorithms
from .network import Network, Params

_TINY = np.finfo(np.float64).tiny


def _flat_params(params: Params) -> np.ndarray:
    return np.concatenate([a.ravel() for group in params for a in group])


def _relative_gap(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per step (axis 0): |reference - other| / |reference| (0 where both vanish)."""
    ref = reference.reshape(len(reference), -1)
    diff = np.linalg.norm(ref - other.reshape(len(other), -1), axis=1)
    norm = np.linalg.norm(ref, axis=1)
    return np.where(norm > 0, diff / np.maximum(norm, _TINY), np.where(diff > 0, np.inf, 0.0))


@dataclass(frozen=True)
class Equivalence:
    """The four processes of Theorem 3 for t = 0..T, from one free fixed point.

    Neuron processes are ``(T + 1, B, sum n_k)`` arrays (layers concatenated); parameter
    processes are ``(T + 1, P)`` arrays (weights then biases, flattened).
    ``*_sym`` use symmetric differences (nudged phases at +beta and -beta).
    """

    beta: float
    dt: float
    fixed_point_residual: float
    sbar: np.ndarray
    thetabar: np.ndarray
    stilde: np.ndarray
    thetatilde: np.ndarray
    stilde_sym: np.ndarray
    thetatilde_sym: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.sbar) - 1

    def errors(self, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Relative gaps per step: (|Sbar - Stilde| / |Sbar|, |Thetabar - Thetatilde| / |Thetabar|)."""
        st, tt = (self.stilde_sym, self.thetatilde_sym) if symmetric else (self.stilde, self.thetatilde)
        return _relative_gap(self.sbar, st), _relative_gap(self.thetabar, tt)


def _concat(layers: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(layers), axis=-1)


def equivalence(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    *,
    steps: int = 40,
    dt: float = 0.2,
    beta: float = 1e-4,
    free_state: Optional[Sequence[np.ndarray]] = None,
    tol: float = 1e-12,
) -> Equivalence:
    """Runs RBP and EP's nudged phases (at +beta and -beta) from one free fixed point.

    ``free_state`` defaults to :func:`eqcore.algorithms.fixed_point` to ``tol``; the nudged
    phases are unclipped (the theorem needs a smooth energy near s0).
    """
    x = net._x(x)
    target = net._target(target)
    if free_state is None:
        fp = algorithms.fixed_point(net, x, tol=tol, dt=dt)
        s0, residual = fp.state, fp.gradient_norm
    else:
        s0 = net._layers(free_state, "free_state")
        residual = max(float(np.abs(g).max()) for g in net.energy_grad_state(x, s0))

    # RBP: Sbar_0..Sbar_T, and Thetabar_t = -dt * mixed(s0, sum_{n<t} Sbar_n).
    run = algorithms.rbp(net, x, target, s0, steps=steps, dt=dt, record=True)
    sbar_layers = run.trajectory
    cumulative = [np.concatenate([np.zeros_like(t[:1]), np.cumsum(t[:-1], axis=0)]) for t in sbar_layers]
    thetabar = np.stack([
        -dt * _flat_params(net.mixed_hvp(x, s0, [c[t] for c in cumulative])) for t in range(steps + 1)
    ])

    # EP: nudged trajectories s_0..s_{T+1} at +beta and -beta.
    def nudged(b: float) -> list[np.ndarray]:
        return net.relax(x, state=s0, target=target, beta=b, steps=steps + 1, dt=dt, clip=False, record=True).trajectory

    plus, minus = nudged(beta), nudged(-beta)
    grad0 = _flat_params(net.energy_grad_params(x, s0))

    def theta_of(traj: list[np.ndarray]) -> np.ndarray:
        return np.stack([_flat_params(net.energy_grad_params(x, [a[t] for a in traj])) for t in range(steps + 1)])

    theta_plus, theta_minus = theta_of(plus), theta_of(minus)
    p, m = _concat(plus), _concat(minus)
    return Equivalence(
        beta=beta,
        dt=dt,
        fixed_point_residual=residual,
        sbar=_concat(sbar_layers),
        thetabar=thetabar,
        stilde=-(p[1:] - p[:-1]) / (beta * dt),
        thetatilde=(theta_plus - grad0) / beta,
        stilde_sym=-((p[1:] - p[:-1]) - (m[1:] - m[:-1])) / (2 * beta * dt),
        thetatilde_sym=(theta_plus - theta_minus) / (2 * beta),
    )


def beta_sweep(net: Network, x: np.ndarray, target: np.ndarray, betas: Sequence[float], *, steps: int, dt: float,
               tol: float = 1e-12) -> dict[str, np.ndarray]:
    """Largest relative gap over t (neurons and parameters together) for each beta."""
    s0 = algorithms.fixed_point(net, x, tol=tol, dt=dt).state
    one, sym = [], []
    for b in betas:
        eq = equivalence(net, x, target, steps=steps, dt=dt, beta=float(b), free_state=s0)
        one.append(max(e.max() for e in eq.errors(False)))
        sym.append(max(e.max() for e in eq.errors(True)))
    return {"beta": np.asarray(betas, dtype=float), "one_sided": np.array(one), "symmetric": np.array(sym)}


def dt_sweep(net: Network, x: np.ndarray, target: np.ndarray, dts: Sequence[float], *, horizon: float,
             beta: float, tol: float = 1e-12) -> dict[str, np.ndarray]:
    """Discretisation error at the physical time ``horizon``: |Sbar(dt) - Sbar(dt_min)| / |Sbar(dt_min)|
    for RBP and for EP's symmetric Stilde (dt_min = the smallest dt, the reference)."""
    dts = sorted(float(d) for d in dts)
    s0 = algorithms.fixed_point(net, x, tol=tol).state
    sbar_at, stilde_at = [], []
    for d in dts:
        n = int(round(horizon / d))
        eq = equivalence(net, x, target, steps=n, dt=d, beta=beta, free_state=s0)
        sbar_at.append(eq.sbar[n])
        stilde_at.append(eq.stilde_sym[n])
    ref = sbar_at[0]
    err = lambda a: float(np.linalg.norm(a - ref) / np.linalg.norm(ref))  # noqa: E731
    return {
        "dt": np.array(dts[1:]),
        "rbp": np.array([err(a) for a in sbar_at[1:]]),
        "ep": np.array([err(a) for a in stilde_at[1:]]),
    }


def format_table(eq: Equivalence, every: int = 1) -> str:
    """The per-step table: step, relative gaps of neurons and parameters, one-sided and symmetric."""
    s1, t1 = eq.errors(False)
    s2, t2 = eq.errors(True)
    lines = [
        f"beta = {eq.beta:g}, dt = {eq.dt:g}, free fixed point max |dE/ds| = {eq.fixed_point_residual:.1e}",
        f"{'step':>5} | {'|Sbar-Stilde|/|Sbar|':>21} {'|Thbar-Thtilde|/|Thbar|':>24} | "
        f"{'symmetric: S':>13} {'Theta':>10}",
    ]
    for t in range(0, eq.steps + 1):
        if t % every and t != eq.steps:
            continue
        lines.append(f"{t:>5} | {s1[t]:>21.3e} {t1[t]:>24.3e} | {s2[t]:>13.3e} {t2[t]:>10.3e}")
    return "\n".join(lines)


def plot(eq: Equivalence, betas: dict[str, np.ndarray], dts: dict[str, np.ndarray], path: Path,
         neurons: int = 4, params: int = 4) -> None:
    """Four panels: neuron processes, parameter processes, gap vs beta, discretisation error vs dt."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(eq.steps + 1)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    ax = axes[0, 0]
    flat_s, flat_st = eq.sbar[:, 0, :], eq.stilde_sym[:, 0, :]
    chosen = np.argsort(-np.abs(flat_s[min(3, eq.steps)]))[:neurons]
    for i, j in enumerate(chosen):
        ax.plot(t, flat_s[:, j], "-", color=colors[i % len(colors)], lw=2.5, alpha=0.5, label=f"Sbar, neuron {j}")
        ax.plot(t, flat_st[:, j], "o", color=colors[i % len(colors)], ms=3, label=f"Stilde, neuron {j}")
    ax.set(title="Neurons: RBP's Sbar_t (lines) and EP's Stilde_t (dots)", xlabel="step t")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[0, 1]
    chosen = np.argsort(-np.abs(eq.thetabar[-1]))[:params]
    for i, j in enumerate(chosen):
        ax.plot(t, eq.thetabar[:, j], "-", color=colors[i % len(colors)], lw=2.5, alpha=0.5, label=f"Thetabar, #{j}")
        ax.plot(t, eq.thetatilde_sym[:, j], "o", color=colors[i % len(colors)], ms=3, label=f"Thetatilde, #{j}")
    ax.set(title="Parameters: Thetabar_t (lines) and Thetatilde_t (dots)", xlabel="step t")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1, 0]
    b = betas["beta"]
    ax.loglog(b, betas["one_sided"], "o-", label="one-sided difference")
    ax.loglog(b, betas["symmetric"], "s-", label="symmetric difference")
    mid = len(b) // 2
    ax.loglog(b, betas["one_sided"][mid] * b / b[mid], "k--", lw=1, label="slope 1")
    ax.loglog(b, betas["symmetric"][mid] * (b / b[mid]) ** 2, "k:", lw=1, label="slope 2")
    ax.set(title="Largest gap over t between EP and RBP vs beta", xlabel="beta", ylabel="relative gap")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    d = dts["dt"]
    ax.loglog(d, dts["rbp"], "o-", label="RBP Sbar")
    ax.loglog(d, dts["ep"], "x--", label="EP Stilde (symmetric)")
    ax.loglog(d, dts["rbp"][-1] * d / d[-1], "k--", lw=1, label="slope 1")
    ax.set(title="Discrete processes converge as dt -> 0 (at time 4)", xlabel="dt",
           ylabel="relative distance to the finest dt")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    net = Network(args.layers, activation=args.activation, dtype="float64", seed=args.seed, threads=args.threads)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, net.sizes[0]))
    if args.activation == "hardsigmoid":  # keep every unit strictly inside (0, 1): the energy is smooth there
        for w in net.weights:
            w *= 0.3
        for b in net.biases:
            b[:] = rng.uniform(0.4, 0.6, size=b.shape)
    target = np.eye(net.sizes[-1])[rng.integers(0, net.sizes[-1], args.batch)]
    eq = equivalence(net, x, target, steps=args.steps, dt=args.dt, beta=args.beta)
    print(f"{net}, batch {args.batch}")
    print(format_table(eq, every=max(1, args.steps // 20)))
    if args.figure:
        betas = beta_sweep(net, x, target, np.geomspace(1e-6, 1e-1, 11), steps=args.steps, dt=args.dt)
        dts = dt_sweep(net, x, target, [0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.003125], horizon=4.0, beta=1e-3)
        path = Path(args.figure)
        plot(eq, betas, dts, path)
        print("gap vs beta (max over t):", "  ".join(
            f"{b:.0e}: {o:.1e}/{s:.1e}" for b, o, s in zip(betas["beta"], betas["one_sided"], betas["symmetric"])))
        print(f"figure written to {path}")
    print(f"done in {time.perf_counter() - start:.2f} s")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .cli import parse_layers

    p = sub.add_parser("check", help="check Theorem 3 (EP's temporal derivatives = RBP's error derivatives)")
    p.add_argument("--layers", type=parse_layers, default=[30, 20, 10, 5], help="layer sizes, e.g. 30-20-10-5")
    p.add_argument("--activation", choices=["sigmoid", "hardsigmoid"], default="sigmoid")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="steps T of both processes")
    p.add_argument("--dt", type=float, default=0.2)
    p.add_argument("--beta", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--figure", default="equivalence.png", help="PNG to write ('' for none)")
    p.set_defaults(run=_run)
