"""Thread scaling: one EP training step and one relaxation on 1 and 2 threads, side by side.

    python bench/threads.py [--repeats 21] [--threads 1,2]

For each network and batch size (>= 64, where the batch split pays), times ep_train_step
(T free + K nudged steps + update) and relax (T steps) with every thread count, interleaved in
rounds so that load drifting on a shared machine hits all alike, and reports medians and the
speed-up over 1 thread. Inputs: MNIST training images when cached here, else uniform values.
Results: bench/results/threads.json. Meaningful only when no other process holds a core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import eqcore
from eqcore import algorithms, data

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [("784-500-10", 20, 4, 64), ("784-500-10", 20, 4, 128), ("784-500-10", 20, 4, 256),
         ("784-500-500-10", 100, 6, 64), ("784-500-500-10", 100, 6, 256)]


def inputs(B: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    try:
        train = data.load("mnist", validation=0, allow_download=False).train
        pick = rng.choice(len(train.labels), B, replace=False)
        return train.images[pick].reshape(B, -1).astype(np.float32) / 255, "mnist"
    except data.DataNotFoundError:
        return rng.random((B, n), dtype=np.float32), "uniform"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    rows = []
    for layers, T, K, B in CASES:
        sizes = [int(n) for n in layers.split("-")]
        rng = np.random.default_rng(0)
        x, kind = inputs(B, sizes[0], rng)
        y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], B)]
        nets = {t: eqcore.Network(sizes, dtype="float32", seed=0, threads=t) for t in counts}
        states = {t: nets[t].zeros(B) for t in counts}
        lrs = [0.01] * (len(sizes) - 1)
        calls = {}
        for t in counts:
            calls[("ep_step", t)] = (lambda t=t: algorithms.ep_train_step(
                nets[t], x, y, states[t], free_steps=T, nudged_steps=K, beta=1.0, learning_rates=lrs))
            calls[("relax", t)] = lambda t=t: nets[t].relax(x, steps=T)
        times = {key: [] for key in calls}
        rounds = 3
        for _ in range(rounds):
            for key, fn in calls.items():
                fn()  # untimed: lets the previous thread team settle
                for _ in range(max(1, args.repeats // rounds)):
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
        med = {key: float(np.median(v)) for key, v in times.items()}
        for what in ("ep_step", "relax"):
            base = med[(what, counts[0])]
            row = {"layers": layers, "T": T, "K": K, "batch": B, "inputs": kind, "call": what,
                   "seconds": {str(t): med[(what, t)] for t in counts},
                   "speedup": {str(t): base / med[(what, t)] for t in counts}}
            rows.append(row)
            print(f"{layers:>15} T{T:<3} K{K:<2} B{B:<4} {what:<8} " + "  ".join(
                f"{t} thr {1e3 * med[(what, t)]:8.2f} ms (x{row['speedup'][str(t)]:.2f})" for t in counts))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps({"repeats": args.repeats, "results": rows}, indent=1))
    print(f"wrote {RESULTS / 'threads.json'}")


if __name__ == "__main__":
    main()
