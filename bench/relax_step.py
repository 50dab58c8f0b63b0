"""Time per relaxation step of the fused kernel, over thread counts (medians of repeated calls).

    python bench/relax_step.py [--layers 784-500-10] [--batch 256] [--steps 100] [--repeats 21]

Each timed call relaxes the whole batch for --steps steps in one kernel call; the figure is
the median call time divided by the steps. Thread counts are measured interleaved, in one
run, so their ratio is what to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import eqcore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="784-500-10")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    sizes = [int(n) for n in args.layers.split("-")]
    net = eqcore.Network(sizes, dtype=args.dtype, seed=0)
    x = np.random.default_rng(0).random((args.batch, sizes[0])).astype(net.dtype)
    counts = [int(t) for t in args.threads.split(",")]
    times: dict[int, list[float]] = {t: [] for t in counts}
    reference = None
    for _ in range(args.repeats):
        for t in counts:  # interleaved, so drifting machine load hits every count alike
            net.threads = t
            start = time.perf_counter()
            state = net.relax(x, steps=args.steps, dt=0.5)
            times[t].append(time.perf_counter() - start)
            if reference is None:
                reference = state
            else:  # every thread count computes the same relaxation
                np.testing.assert_allclose(state[-1], reference[-1], rtol=1e-4, atol=1e-5)  # float32, 100 steps
    base = np.median(times[counts[0]])
    print(f"{args.layers} batch {args.batch} {args.dtype}, {args.steps} steps per call, {args.repeats} calls")
    for t in counts:
        med = np.median(times[t])
        print(f"  threads {t}: {med / args.steps * 1e6:8.1f} us/step (median), speed-up x{base / med:.2f}")


if __name__ == "__main__":
    main()
