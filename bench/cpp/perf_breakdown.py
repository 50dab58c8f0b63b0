"""Where the time of a kernel call goes, from a `perf record -g` profile of kernel_bench.

Build with frame pointers (Eigen's GEMM keeps up to 128 KB of packed operands on the stack, which
defeats `--call-graph dwarf`), record one benchmark, then attribute every sample:

    cmake -S bench/cpp -B build/bench-fp -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-fno-omit-frame-pointer
    cmake --build build/bench-fp
    EQCORE_BENCH_REFERENCE=0 perf record -e cpu-clock -F 10000 -g -o ep20.data \\
        build/bench-fp/kernel_bench --benchmark_filter='EpStep/784-500-10/T:20/K:4/B:20/threads:1/' --benchmark_min_time=5
    python bench/cpp/perf_breakdown.py ep20.data

(`cpu-clock`: this VM exposes no hardware counters. EQCORE_BENCH_REFERENCE=0 keeps the reference
GEMMs out of the profile.) Samples are counted only when a frame of the eqcore kernel is on the
stack. Each is classified twice: by its leaf function (GEMM micro-kernel, packing, the
relaxation's element-wise code, memset, kernel page faults...) and by the part of the kernel call
it belongs to (input drive, the products of a relaxation step, its element-wise work, the EP
update), the latter from the Eigen GEMM instantiation on the stack:
    general_matrix_matrix_product<long, float, 0, false, float, 0, ...>   rho W      (row-major A B)
    general_matrix_matrix_product<long, float, 1, false, float, 0, ...>   rho W^T    (A B^T)
    general_matrix_matrix_product<long, float, 0, false, float, 1, ...>   rho^T rho  (A^T B, updates)
"""

from __future__ import annotations

import collections
import subprocess
import sys


def leaf_category(sym: str) -> str:
    if sym.startswith("[k]"):
        return "OS kernel (page faults, scheduling)"
    if "gebp_kernel" in sym:
        return "GEMM micro-kernel (gebp)"
    if "gemm_pack_lhs" in sym or "gemm_pack_rhs" in sym:
        return "GEMM packing"
    if "memset" in sym:
        return "memset (Eigen setZero before GEMM, buffers)"
    if "memcpy" in sym or "memmove" in sym:
        return "memcpy"
    if "malloc" in sym or "free" in sym or "_int_" in sym or "operator new" in sym or "operator delete" in sym:
        return "malloc/free"
    if "Relaxer" in sym and "step" in sym:
        return "Relaxer::step self (Euler loop, rho)"
    if "rows_finite" in sym:
        return "finite checks"
    if "column_sums" in sym:
        return "bias column sums"
    if "ep_step" in sym:
        return "ep_step self (copies, delta)"
    if "gomp" in sym.lower():
        return "OpenMP runtime"
    return "other: " + sym[:70]


def context_category(chain: list[str]) -> str:
    gemm = ""
    for s in chain:
        if "general_matrix_matrix_product<long, float, 0, false, float, 0" in s:
            gemm = "GEMM rho W"
        elif "general_matrix_matrix_product<long, float, 1, false, float, 0" in s:
            gemm = "GEMM rho W^T"
        elif "general_matrix_matrix_product<long, float, 0, false, float, 1" in s:
            gemm = "GEMM rho^T rho"
        else:
            continue
        break
    for s in chain:
        if "input_drive" in s:
            return "input drive x W0"
        if "Relaxer" in s and "::step" in s:
            return "relaxation step / " + (gemm or "element-wise")
        if "Relaxer" in s and "bind" in s:
            return "relaxation bind (rho of the state)"
        if "ep_step" in s:
            return "ep_step body (update" + (", " + gemm if gemm else ": copies, checks, sums") + ")"
        if "hvp" in s or "LocalHessian" in s:
            return "hvp / " + (gemm or "element-wise, copies")
    return "kernel (other)"


def main(path: str) -> None:
    out = subprocess.run(["perf", "script", "-i", path, "-F", "ip,sym", "--no-inline"],
                         capture_output=True, text=True, check=True).stdout
    leaf: collections.Counter[str] = collections.Counter()
    context: collections.Counter[str] = collections.Counter()
    both: collections.Counter[tuple[str, str]] = collections.Counter()
    n = 0
    for block in out.split("\n\n"):
        frames = []
        for line in block.strip().splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                ip, sym = parts
                frames.append(("[k]" + sym) if ip.startswith("ffffffff") else sym)
        if not any("eqcore::" in f for f in frames):
            continue  # set-up, the benchmark library, other benchmarks
        n += 1
        a, c = leaf_category(frames[0]), context_category(frames)
        leaf[a] += 1
        context[c] += 1
        both[(c, a)] += 1
    print(f"{path}: {n} samples with an eqcore frame on the stack")
    print("\nby leaf function:")
    for k, v in leaf.most_common():
        if v / n >= 0.002:
            print(f"  {100 * v / n:5.1f}%  {k}")
    print("\nby part of the call:")
    for k, v in context.most_common():
        print(f"  {100 * v / n:5.1f}%  {k}")
    print("\npart x leaf (>= 0.5%):")
    for (c, a), v in both.most_common():
        if v / n >= 0.005:
            print(f"  {100 * v / n:5.1f}%  {c:45s} {a}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
