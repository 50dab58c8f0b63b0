"""The ``eqcore`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np

from .network import Network


# Modules that define `add_parser(subparsers)` for their command (`eqcore check`, `eqcore train`).
_COMMAND_MODULES: tuple[str, ...] = ("checks", "train")


def parse_layers(text: str) -> list[int]:
    try:
        sizes = [int(n) for n in text.split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers: expected sizes like 784-500-10, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"layers: expected at least two sizes >= 1, got {text!r}")
    return sizes


def _demo(args: argparse.Namespace) -> int:
    net = Network(args.layers, activation=args.activation, dtype=args.dtype, seed=args.seed, threads=args.threads)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, net.sizes[0]), dtype=np.float64).astype(net.dtype)
    print(f"{net}; batch {args.batch}, dt {args.dt}")
    # With clipping, units held at 0 or 1 keep a gradient: report the projected one, |ds|/dt.
    print(f"{'steps':>6} {'mean energy':>14} {'max |ds|/dt':>12}")
    state = net.zeros(args.batch)
    done = 0
    start = time.perf_counter()
    for target_steps in np.unique(np.geomspace(1, args.steps, 8).astype(int)):
        state = net.relax(x, state=state, steps=int(target_steps) - done, dt=args.dt)
        done = int(target_steps)
        after = net.relax(x, state=state, steps=1, dt=args.dt)
        grad = max(float(np.abs(a - b).max()) for a, b in zip(after, state)) / args.dt
        print(f"{done:>6} {net.energy(x, state).mean():>14.6f} {grad:>12.3e}")
    elapsed = time.perf_counter() - start
    timing = net.relax(x, steps=args.steps, dt=args.dt)
    t0 = time.perf_counter()
    timing = net.relax(x, steps=args.steps, dt=args.dt)
    per_step = (time.perf_counter() - t0) / max(timing.steps, 1)
    print(f"total {elapsed:.3f} s; one {args.steps}-step relaxation call: {per_step * 1e6:.1f} us/step")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="relax a random network on random inputs and print its energy")
    demo.add_argument("--layers", type=parse_layers, default=[784, 500, 10], help="layer sizes, e.g. 784-500-10")
    demo.add_argument("--activation", choices=["hardsigmoid", "sigmoid"], default="hardsigmoid")
    demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    demo.add_argument("--batch", type=int, default=256)
    demo.add_argument("--steps", type=int, default=100)
    demo.add_argument("--dt", type=float, default=0.5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None)
    demo.set_defaults(run=_demo)
    # Each further command lives beside the code it drives and registers itself here.
    for module in _COMMAND_MODULES:
        importlib.import_module(f"eqcore.{module}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
