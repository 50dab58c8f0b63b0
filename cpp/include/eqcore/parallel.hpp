// Splitting work over threads. Examples in a batch are independent, so most kernels give
// each thread a contiguous block of rows; reductions over the batch (parameter gradients)
// split the rows (or columns) of the parameter instead, so no two threads write the same
// memory and no sum is split between threads. Where the per-thread part is an Eigen GEMM, its
// blocking depends on the part's width, so such results may differ in the last bits between
// thread counts; the register-blocked products (products.hpp) do not.
#pragma once

#include "eqcore/types.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace eqcore {

// Threads actually used for n independent items: never more threads than items, nor than
// processors (more only oversubscribes the cores, and thousands of threads can fail to start,
// which libgomp answers by exiting the process).
inline int threads_for(Index items, int threads) {
  if (threads < 1) threads = 1;
#ifdef _OPENMP
  threads = std::min(threads, std::max(1, omp_get_num_procs()));
#endif
  if (items < threads) threads = static_cast<int>(std::max<Index>(items, 1));
  return threads;
}

// [begin, end) of part t out of nt equal parts of [0, n).
struct Range {
  Index begin;
  Index end;
  Index size() const { return end - begin; }
};
inline Range part(Index n, int t, int nt) { return {n * t / nt, n * (t + 1) / nt}; }

// The same with every boundary but n a multiple of `align` (vector kernels then split no packet
// of columns between threads).
inline Range aligned_part(Index n, Index align, int t, int nt) {
  const Range units = part((n + align - 1) / align, t, nt);
  return {std::min(n, units.begin * align), std::min(n, units.end * align)};
}

// Runs body(t, nt) on nt threads (an OpenMP team); body may use `#pragma omp barrier`,
// which all nt threads must then reach equally often.
template <class Body>
void run_team(int nt, Body&& body) {
#ifdef _OPENMP
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    { body(omp_get_thread_num(), omp_get_num_threads()); }
    return;
  }
#endif
  body(0, 1);
}

inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// The largest of the values the threads of a team post at one step, seen identically by all
// of them (so they all take the same stop decision). Slots are double-buffered by step
// parity, so one barrier per step suffices: a slot is rewritten two steps later, after every
// thread has passed the next barrier. NaN is posted as +inf.
template <class T>
class TeamMax {
 public:
  explicit TeamMax(int threads) : slots_(2 * static_cast<std::size_t>(threads), T(0)) {}

  T reduce(Index step, int t, int nt, T value) {
    T* slots = slots_.data() + (step & 1) * nt;
    slots[t] = std::isnan(value) ? std::numeric_limits<T>::infinity() : value;
    team_barrier();
    T largest = T(0);
    for (int j = 0; j < nt; ++j) largest = std::max(largest, slots[j]);
    return largest;
  }

 private:
  std::vector<T> slots_;
};

// Runs body(range) over nt parts of [0, n); with `align`, every boundary but n is a multiple
// of it (see aligned_part).
template <class Body>
void parallel_for(Index n, int threads, Body&& body, Index align = 1) {
  const int nt = threads_for((n + align - 1) / align, threads);
  run_team(nt, [&](int t, int team) { body(aligned_part(n, align, t, team)); });
}

}  // namespace eqcore
