"""EP training step, side by side in one process: eqcore vs the way published EP code runs.

    python bench/ep_bench.py [--threads 2] [--repeats 15] [--quick] [--inputs mnist|uniform]

One step = free phase (T Euler steps from persistent states) + nudged phase (K steps) +
parameter update, float32, hard sigmoid with clipping, dt 0.5, beta 1. Contenders:
  eqcore        algorithms.ep_train_step: one kernel call per step
  numpy         a Python loop over time steps, batched matmuls, x W_0 recomputed every step
                (as published EP code does)
  numpy-hoisted the same with the input drive x W_0 computed once per phase
  torch         the published-style loop in PyTorch on the CPU (torch threads = eqcore threads);
                skipped with a message if torch is not installed (pip install torch==2.13.0)
Inputs: a random minibatch of MNIST training images (x / 255, ~19 % non-zeros: the workload the
presets train on, and what eqcore's sparse input path is for) when the dataset is on this machine
(`eqcore train` or `eqcore.data.load("mnist")` caches it), else, or with --inputs uniform, dense
uniform [0, 1) values (every product dense). The unavoidable FLOPs are counted dense either way.
Each case first checks that all contenders produce the same update (float32 tolerance), then
times them interleaved and reports medians, examples/s and ratios, plus the fraction of the
machine's float32 GEMM rate (measured in the same run) that eqcore reaches on the FLOPs an EP
step cannot avoid. Results: bench/results/ep_bench.json and bench/results/ep_bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _threads_from_argv() -> str:
    """--threads, read before numpy loads OpenBLAS (its thread count is fixed at load time)."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(len(os.sched_getaffinity(0)))


# numpy's BLAS gets the same threads as eqcore and torch: a fair contest, and no oversubscription.
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads_from_argv())

import numpy as np  # noqa: E402

import eqcore  # noqa: E402
from eqcore import algorithms, data  # noqa: E402

CASES = [
    ("784-500-10", 20, 4, 20),
    ("784-500-10", 20, 4, 256),
    ("784-500-500-10", 100, 6, 20),
    ("784-1000-1000-1000-10", 200, 10, 128),
]
DT, BETA = 0.5, 1.0
RESULTS = Path(__file__).resolve().parent / "results"


def unavoidable_flops(sizes: list[int], T: int, K: int, B: int) -> float:
    """Input drive once, the per-step products (both directions of every hidden weight matrix),
    and the parameter update (one GEMM for W_0, two for the others)."""
    hidden_pairs = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    drive = 2.0 * B * sizes[0] * sizes[1]
    steps = (T + K) * 4.0 * B * hidden_pairs
    update = 2.0 * B * sizes[0] * sizes[1] + 4.0 * B * hidden_pairs
    return drive + steps + update


def lrs_for(sizes: list[int]) -> list[float]:
    return [0.05 / (k + 1) for k in range(len(sizes) - 1)]


# ---- the published way, in numpy (xp = numpy) or torch ----------------------------------

def reference_step(xp, W, b, x, y, s, T, K, lrs, hoist: bool):
    """One EP step, written as published EP code runs it; updates W, b, s in place."""
    L = len(W)

    def relax(state, steps, beta):
        drive0 = x @ W[0] if hoist else None
        for _ in range(steps):
            r = [xp.clip(a, 0, 1) for a in state]
            new = []
            for k in range(L):
                u = (drive0 if hoist else x @ W[0]) if k == 0 else r[k - 1] @ W[k]
                u = u + b[k]
                if k + 1 < L:
                    u = u + r[k + 1] @ W[k + 1].T
                mask = ((state[k] >= 0) & (state[k] <= 1)) * 1.0
                grad = state[k] - mask * u
                if k == L - 1 and beta != 0:
                    grad = grad + beta * (state[k] - y)
                new.append(xp.clip(state[k] - DT * grad, 0, 1))
            state = new
        return state

    s0 = relax(list(s), T, 0.0)
    sb = relax(list(s0), K, BETA)
    r0 = [x] + [xp.clip(a, 0, 1) for a in s0]
    rb = [x] + [xp.clip(a, 0, 1) for a in sb]
    B = x.shape[0]
    for k in range(L):
        c = lrs[k] / (BETA * B)
        W[k] += c * (rb[k].T @ rb[k + 1] - r0[k].T @ r0[k + 1])
        b[k] += c * (rb[k + 1] - r0[k + 1]).sum(0)
    for k in range(L):
        s[k][...] = s0[k]


def median_time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def gemm_rate(threads: int, torch) -> float:
    """float32 GFLOP/s of a large GEMM (the machine's practical limit), eqcore threads."""
    n = 1024
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    if torch is not None:
        ta = torch.from_numpy(a)
        f = lambda: ta @ ta  # noqa: E731
    else:
        f = lambda: a @ a  # noqa: E731
    f()
    best = min(median_time(f, 7))
    return 2.0 * n**3 / best / 1e9


def mnist_images() -> "tuple[np.ndarray, np.ndarray] | None":
    """MNIST training images (N, 784) uint8 and labels, if cached on this machine (never downloads)."""
    try:
        ds = data.load("mnist", validation=0, allow_download=False)
    except data.DataNotFoundError:
        return None
    return ds.train.images.reshape(len(ds.train.labels), -1), ds.train.labels


def run_case(layers, T, K, B, threads, repeats, torch, images=None):
    sizes = [int(n) for n in layers.split("-")]
    rng = np.random.default_rng(0)
    net = eqcore.Network(sizes, dtype="float32", seed=0, threads=threads)
    if images is not None and sizes[0] == images[0].shape[1]:
        pick = rng.choice(len(images[1]), B, replace=False)
        x = images[0][pick].astype(np.float32) / 255
        y = np.eye(sizes[-1], dtype=np.float32)[images[1][pick]]
        inputs = "mnist"
    else:
        x = rng.random((B, sizes[0]), dtype=np.float32)
        y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], B)]
        inputs = "uniform"
    s_init = [rng.random((B, n), dtype=np.float32) for n in sizes[1:]]
    lrs = lrs_for(sizes)

    def fresh():
        return [w.copy() for w in net.weights], [v.copy() for v in net.biases], [a.copy() for a in s_init]

    # --- correctness: all contenders give the same update from the same start -------------
    W0, b0, s0 = fresh()
    check = eqcore.Network(sizes, dtype="float32", seed=0, threads=threads)
    st = [a.copy() for a in s0]
    algorithms.ep_train_step(check, x, y, st, free_steps=T, nudged_steps=K, beta=BETA, learning_rates=lrs, dt=DT)
    expected = check.weights + check.biases + st
    contenders = {}
    for name, hoist in (("numpy", False), ("numpy-hoisted", True)):
        W, b, s = fresh()
        reference_step(np, W, b, x, y, s, T, K, lrs, hoist)
        contenders[name] = W + b + s
    if torch is not None:
        W, b, s = fresh()
        tW, tb, ts = ([torch.from_numpy(a) for a in group] for group in (W, b, s))
        with torch.no_grad():
            reference_step(torch, tW, tb, torch.from_numpy(x), torch.from_numpy(y), ts, T, K, lrs, False)
        contenders["torch"] = [a.numpy() for a in tW + tb + ts]
    n_params = 2 * (len(sizes) - 1)
    for name, got in contenders.items():
        for i, (a, e) in enumerate(zip(got, expected)):
            # float32 with different summation orders: parameters after one update agree to 2e-5;
            # states (in [0, 1]) after T + K clipped steps drift apart by up to ~1e-4 on the
            # longest relaxations (T = 200), where a unit near a clip boundary amplifies rounding.
            atol = 2e-5 if i < n_params else 1e-3
            np.testing.assert_allclose(a, e, rtol=1e-3, atol=atol, err_msg=f"{layers} B={B}: {name} differs")

    # --- timing, interleaved -------------------------------------------------------------
    state_e = [a.copy() for a in s_init]
    W, b, s = fresh()
    runs = {
        "eqcore": lambda: algorithms.ep_train_step(net, x, y, state_e, free_steps=T, nudged_steps=K, beta=BETA,
                                                   learning_rates=lrs, dt=DT),
        "numpy": lambda: reference_step(np, W, b, x, y, s, T, K, lrs, False),
        "numpy-hoisted": lambda: reference_step(np, W, b, x, y, s, T, K, lrs, True),
    }
    if torch is not None:
        tW, tb, ts = ([torch.from_numpy(a.copy()) for a in group] for group in fresh())
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            with torch.no_grad():
                reference_step(torch, tW, tb, tx, ty, ts, T, K, lrs, False)

        runs["torch"] = torch_step
    slow = T + K >= 100 and B >= 100
    reps = max(3, repeats // 3) if slow else repeats
    times = {name: [] for name in runs}
    # Rounds interleave the contenders (drifting load hits all alike), but each runs a block of
    # calls after an untimed one: thread pools of the previous library (OpenMP, OpenBLAS) spin
    # for a while after their last call, and would otherwise slow the next contender down.
    rounds = 3
    for _ in range(rounds):
        for name, fn in runs.items():
            fn()
            times[name] += median_time(fn, max(1, reps // rounds))
    med = {name: float(np.median(t)) for name, t in times.items()}
    flops = unavoidable_flops(sizes, T, K, B)
    return {
        "layers": layers, "T": T, "K": K, "batch": B, "threads": threads, "repeats": reps, "inputs": inputs,
        "input_density": float(np.count_nonzero(x)) / x.size,
        "seconds": med, "examples_per_s": {k: B / v for k, v in med.items()},
        "speedup_of_eqcore": {k: v / med["eqcore"] for k, v in med.items() if k != "eqcore"},
        "unavoidable_gflop": flops / 1e9, "eqcore_gflops": flops / med["eqcore"] / 1e9,
    }


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["eqcore", "numpy-hoisted", "numpy", "torch"]
    fig, ax = plt.subplots(figsize=(10, 5), constrained_layout=True)
    width = 0.2
    for i, name in enumerate(names):
        vals = [r["examples_per_s"].get(name, np.nan) for r in results]
        ax.bar(np.arange(len(results)) + (i - 1.5) * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(results)),
                  [f"{r['layers']}\nT{r['T']} K{r['K']} B{r['batch']}" for r in results], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("training examples / s (EP step, float32)")
    ax.set_title(f"EP training throughput, {results[0]['threads']} thread(s), medians")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=eqcore.network.default_threads())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="only the first case, 5 repeats")
    parser.add_argument("--inputs", choices=["mnist", "uniform"], default="mnist",
                        help="MNIST images if cached here (default), or dense uniform values")
    args = parser.parse_args()
    images = mnist_images() if args.inputs == "mnist" else None
    if args.inputs == "mnist" and images is None:
        print("MNIST is not cached on this machine: dense uniform inputs instead (eqcore train caches it)")
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("torch not installed: skipping the PyTorch contender (pip install torch==2.13.0)")
    cases = CASES[:1] if args.quick else CASES
    repeats = 5 if args.quick else args.repeats
    # The limit is the best GEMM rate the machine shows: measured before and after the cases
    # (single measurements here have varied from 104 to 160 GFLOP/s between runs).
    rates = [gemm_rate(args.threads, torch)]
    results = []
    for layers, T, K, B in cases:
        results.append(run_case(layers, T, K, B, args.threads, repeats, torch, images))
    rates.append(gemm_rate(args.threads, torch))
    rate = max(rates)
    print(f"float32 GEMM 1024^3 ({'torch' if torch else 'numpy'}, {args.threads} threads): {rate:.1f} GFLOP/s "
          f"(best of {rates[0]:.1f} before and {rates[1]:.1f} after the cases)")
    for r in results:
        layers, T, K, B = r["layers"], r["T"], r["K"], r["batch"]
        r["fraction_of_gemm_rate"] = r["eqcore_gflops"] / rate
        ratios = "  ".join(f"x{v:.1f} vs {k}" for k, v in r["speedup_of_eqcore"].items())
        print(f"{layers:>22} T{T:<3} K{K:<2} B{B:<4} {r['inputs']:>7} eqcore {r['examples_per_s']['eqcore']:>9.0f} ex/s "
              f"({r['eqcore_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_gemm_rate']:.0f}% of GEMM)  {ratios}")
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "gemm_gflops": rate, "gemm_gflops_before_after": rates, "results": results}
    # The full default run owns ep_bench.json/png; other runs get their own names.
    name = "ep_bench" + ("" if args.inputs == "mnist" else f"_{args.inputs}") + ("_quick" if args.quick else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / (name + '.json')} and {RESULTS / (name + '.png')}")


if __name__ == "__main__":
    main()
