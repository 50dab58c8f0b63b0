"""Cost of each gradient method per minibatch, relative to one EP step (free + nudged phase).

    python bench/gradient_methods.py [--layers 784-500-10] [--batch 20] [--threads 1]

From one free fixed point on an MNIST-sized input (random pixels), float32, sigmoid:
EP one-sided (K nudged steps + two parameter gradients), EP symmetric, truncated RBP (K steps),
RBP to convergence, the implicit gradient (CG to 1e-4), BPTT through the T free steps; the EP
training step itself (free T + nudged K + update, one kernel call) is the unit. Medians.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import eqcore
from eqcore import algorithms


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="784-500-10")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    # Sigmoid by default: RBP to convergence and the implicit gradient need a smooth energy at s0
    # (with the clipped hard sigmoid, H(s0) is typically not positive definite).
    parser.add_argument("--activation", default="sigmoid", choices=["sigmoid", "hardsigmoid"])
    parser.add_argument("-T", type=int, default=20)
    parser.add_argument("-K", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    sizes = [int(n) for n in args.layers.split("-")]
    net = eqcore.Network(sizes, activation=args.activation, dtype="float32", seed=0, threads=args.threads)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, sizes[0]), dtype=np.float32)
    y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], args.batch)]
    s0 = net.relax(x, steps=2000, tol=1e-6)  # a free fixed point
    state = [a.copy() for a in s0]
    lrs = [0.0] * net.layers  # parameters stay fixed while timing
    T, K = args.T, args.K
    ep_unit = median_ms(lambda: algorithms.ep_train_step(net, x, y, state, free_steps=T, nudged_steps=K, beta=1.0,
                                                         learning_rates=lrs), args.repeats)
    methods = {
        f"EP training step (T={T} free + K={K} nudged + update), the unit": lambda: algorithms.ep_train_step(
            net, x, y, state, free_steps=T, nudged_steps=K, beta=1.0, learning_rates=lrs),
        f"free phase alone (T={T})": lambda: net.relax(x, state=s0, steps=T),
        f"EP gradient, one-sided (K={K})": lambda: algorithms.ep_gradient(net, x, y, s0, beta=1.0, steps=K),
        f"EP gradient, symmetric (2 x K={K})": lambda: algorithms.ep_gradient(net, x, y, s0, beta=1.0, steps=K,
                                                                             variant="symmetric"),
        f"RBP truncated (K={K})": lambda: algorithms.rbp_gradient(net, x, y, s0, steps=K),
        "RBP to |Sbar| < 1e-4": lambda: algorithms.rbp(net, x, y, s0, steps=10_000, tol=1e-4),
        "implicit gradient (CG, tol 1e-4)": lambda: algorithms.implicit_gradient(net, x, y, s0, tol=1e-4),
        f"BPTT through the free phase (T={T})": lambda: algorithms.bptt_gradient(net, x, y, steps=T, state=s0),
    }
    print(f"{args.layers}, batch {args.batch}, float32, {args.threads} thread(s); medians of {args.repeats}")
    print(f"{'method':<62} {'ms/batch':>9} {'x EP step':>10}")
    for name, fn in methods.items():
        ms = median_ms(fn, args.repeats)
        print(f"{name:<62} {ms:>9.3f} {ms / ep_unit:>10.2f}")
    run = algorithms.rbp(net, x, y, s0, steps=10_000, tol=1e-4)
    _, info = algorithms.solve_hessian(net, x, s0, [np.ones_like(a) for a in s0], tol=1e-4)
    print(f"(RBP to 1e-4 took {run.steps} steps; CG took {info.iterations} iterations)")


if __name__ == "__main__":
    main()
