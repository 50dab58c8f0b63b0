"""Markdown tables of the medians in a kernel_bench JSON file (Google Benchmark output).

    python bench/cpp/summarize.py bench/results/kernel_bench.json

One table per operation (Relax, EpStep, Hvp, InputDrive): time per call, time per Euler step
where it applies, GFLOP/s of the products the operation cannot avoid, GFLOP/s of plain Eigen
GEMMs of the same shapes measured in the same run, and their ratio. Then the EigenGemm rates.
Only the standard library: runs without numpy or the eqcore package.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    medians = [b for b in data["benchmarks"] if b.get("aggregate_name", "median") == "median" and not b.get("error_occurred")]
    ctx = data["context"]
    print(f"{ctx.get('date', '')}, {ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz, "
          f"load average {', '.join(f'{x:.2f}' for x in ctx.get('load_avg', []))}, "
          f"GOMP_SPINCOUNT={ctx.get('GOMP_SPINCOUNT', '?')}, Eigen {ctx.get('eigen_version', '?')} ({ctx.get('eigen_simd', '?')})")
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in medians:
        groups[b["run_name"].split("/")[0]].append(b)
    for op in ("Relax", "EpStep", "Hvp", "InputDrive", "EigenGemm"):
        rows = groups.get(op)
        if not rows:
            continue
        print(f"\n### {op}\n")
        has_step = any("time_per_step" in b for b in rows)
        head = ["benchmark", "time/product" if op == "EigenGemm" else "time/call (median)", "cpu/real"] + (["time/step"] if has_step else []) + ["GFLOP/s", "GEMM GFLOP/s", "fraction of GEMM"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for b in rows:
            name = re.sub(r"/(real_time|min_time:[0-9.]+)", "", b["run_name"])[len(op) + 1:]
            t = b["real_time"] * scale[b["time_unit"]]
            shape = re.match(r"(\d+)x(\d+)x(\d+)|square:(\d+)", name)
            if op == "EigenGemm" and shape:  # an iteration runs several products: show one
                m, k, n = (int(shape.group(4)),) * 3 if shape.group(4) else map(int, shape.group(1, 2, 3))
                t = 2.0 * m * k * n / (b["GFLOPS"] * 1e9)
            cells = [name, fmt_time(t), f"{b['cpu_time'] / b['real_time']:.2f}"]
            if has_step:
                cells.append(fmt_time(b["time_per_step"]) if "time_per_step" in b else "")
            cells.append(f"{b['GFLOPS']:.1f}")
            cells.append(f"{b['gemm_GFLOPS']:.1f}" if "gemm_GFLOPS" in b else "")
            cells.append(f"{b['fraction_of_gemm']:.2f}" if "fraction_of_gemm" in b else "")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/kernel_bench.json")
