// The fused relaxation loop: many Euler steps of s <- s - dt dE^beta/ds for a whole batch in
// one call. All layers update synchronously from the previous state.
#pragma once

#include "eqcore/activation.hpp"
#include "eqcore/network.hpp"
#include "eqcore/parallel.hpp"
#include "eqcore/types.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace eqcore {

namespace detail {

// One Euler step for one example's layer (n contiguous entries), in place:
//   s <- s - dt (s - rho'(s) u [+ beta (s - y)]),  u = other + add,  then clip to [0, 1].
// r = rho(s) before the step; `other` is read only when has_other. Returns max |change|.
template <class Act, bool Clip, bool Nudge, bool HasOther, class T>
T euler_row_impl(T* s, const T* r, const T* other, const T* add, const T* y, Index n, T dt, T beta) {
  T largest = T(0);
#pragma omp simd reduction(max : largest)
  for (Index j = 0; j < n; ++j) {
    const T u = HasOther ? other[j] + add[j] : add[j];
    T grad = s[j] - Act::drho(s[j], r[j]) * u;
    if (Nudge) grad += beta * (s[j] - y[j]);
    T next = s[j] - dt * grad;
    if (Clip) next = std::min(std::max(next, T(0)), T(1));
    largest = std::max(largest, std::abs(next - s[j]));
    s[j] = next;
  }
  return largest;
}

// Chooses the compiled variant, so the element loop has no run-time branch.
template <class Act, class T>
T euler_row(T* s, const T* r, const T* other, const T* add, const T* y, Index n, T dt, T beta, bool clip,
            bool has_other) {
  const bool nudge = y != nullptr;
  const int variant = (clip ? 4 : 0) | (nudge ? 2 : 0) | (has_other ? 1 : 0);
  switch (variant) {
    case 0: return euler_row_impl<Act, false, false, false>(s, r, other, add, y, n, dt, beta);
    case 1: return euler_row_impl<Act, false, false, true>(s, r, other, add, y, n, dt, beta);
    case 2: return euler_row_impl<Act, false, true, false>(s, r, other, add, y, n, dt, beta);
    case 3: return euler_row_impl<Act, false, true, true>(s, r, other, add, y, n, dt, beta);
    case 4: return euler_row_impl<Act, true, false, false>(s, r, other, add, y, n, dt, beta);
    case 5: return euler_row_impl<Act, true, false, true>(s, r, other, add, y, n, dt, beta);
    case 6: return euler_row_impl<Act, true, true, false>(s, r, other, add, y, n, dt, beta);
    default: return euler_row_impl<Act, true, true, true>(s, r, other, add, y, n, dt, beta);
  }
}

}  // namespace detail

template <class T>
struct RelaxOptions {
  Index steps = 20;  // maximum number of Euler steps
  T dt = T(0.5);
  T beta = T(0);     // nudging strength; needs a target when != 0
  bool clip = false; // project states onto [0, 1] after each step (the 2017 paper)
  T tol = T(0);      // stop after the first step whose largest |s_{t+1} - s_t| is < tol; 0 = never
  int threads = 1;
};

struct RelaxResult {
  Status status = Status::Ok;
  Index steps = 0;         // steps taken
  Index failed_step = -1;  // with Status::Diverged: the step at which a non-finite state was seen
};

// Relaxes `state` in place.
//   x           (B, n_0)
//   state       layer k: (B, n_k), k = 1..L; read as the initial state, overwritten
//   target      (B, n_L), or nullptr when opt.beta == 0
//   trajectory  empty, or layer k: (opt.steps + 1, B, n_k); entry t receives the state after
//               t steps (entry 0 the initial state); entries past the last step are untouched.
// No argument may alias another. Allocation happens once per call and thread, before the loop.
template <class T>
RelaxResult relax(const Net<T>& net, const T* x, Index B, const LayerPtrs<T>& state, const T* target,
                  const RelaxOptions<T>& opt, const LayerPtrs<T>& trajectory) {
  const int L = net.layers();
  const int requested = threads_for(B, opt.threads);
  const bool nudged = opt.beta != T(0) && target != nullptr;
  const bool use_tol = opt.tol > T(0);
  const T inf = std::numeric_limits<T>::infinity();
  TeamMax<T> largest(requested);
  std::vector<Index> failed(static_cast<std::size_t>(requested), -1);
  std::vector<Index> taken(static_cast<std::size_t>(requested), 0);

  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    run_team(requested, [&](int t, int nt) {
      const Range r = part(B, t, nt);
      const Index rows = r.size();
      const auto X = detail::rows_of(x, net.size(0), r);

      // Workspace, allocated here once: rho(s) and drive of every layer, and the input drive
      // x W_0 + b_1, which is constant during the relaxation.
      std::vector<Matrix<T>> R(static_cast<std::size_t>(L + 1)), U(static_cast<std::size_t>(L + 1));
      std::vector<MatrixMap<T>> S;
      S.reserve(static_cast<std::size_t>(L + 1));
      S.emplace_back(nullptr, 0, 0);
      for (int k = 1; k <= L; ++k) {
        R[k].resize(rows, net.size(k));
        U[k].resize(rows, net.size(k));
        S.push_back(detail::rows_of(state[k - 1], net.size(k), r));
      }
      Matrix<T> input_drive = X * net.weight(0);
      input_drive.rowwise() += net.bias(1);

      auto record = [&](Index step) {
        if (trajectory.empty()) return;
        for (int k = 1; k <= L; ++k)
          MatrixMap<T>(trajectory[k - 1] + (step * B + r.begin) * net.size(k), rows, net.size(k)) = S[k];
      };
      for (int k = 1; k <= L; ++k) R[k] = Act::rho(S[k].array());
      record(0);

      Index step = 0;
      while (step < opt.steps) {
        // Drives from the current state, for every layer before any layer moves.
        for (int k = 2; k <= L; ++k) U[k].noalias() = R[k - 1] * net.weight(k - 1);
        for (int k = 1; k < L; ++k) {
          if (k == 1)
            U[1].noalias() = R[2] * net.weight(1).transpose();
          else
            U[k].noalias() += R[k + 1] * net.weight(k).transpose();
        }
        // One fused element-wise pass per layer: Euler step, projection, largest |ds|.
        T step_largest = T(0);
        for (int k = 1; k <= L; ++k) {
          const Index n = net.size(k);
          const bool has_other = L > 1;  // U[k] holds the drive from the other free layers
          const bool nudge_here = nudged && k == L;
          for (Index i = 0; i < rows; ++i) {
            const T* add = k == 1 ? input_drive.data() + i * n : net.biases[static_cast<std::size_t>(k - 1)];
            const T* y = nudge_here ? target + (r.begin + i) * n : nullptr;
            const T m = detail::euler_row<Act>(S[k].data() + i * n, R[k].data() + i * n, U[k].data() + i * n, add, y,
                                               n, opt.dt, opt.beta, opt.clip, has_other);
            step_largest = std::max(step_largest, m);
          }
          R[k] = Act::rho(S[k].array());
        }
        ++step;
        // A non-finite value anywhere reaches the (small) output layer within L steps through
        // the products, so checking that layer each step is enough to stop a divergence early.
        const bool bad = !S[L].allFinite();
        if (bad) failed[t] = step;
        record(step);
        if (use_tol) {
          const T global = largest.reduce(step, t, nt, bad ? inf : step_largest);
          if (global == inf || global < opt.tol) break;  // same decision in every thread
        } else if (bad) {
          break;
        }
      }
      taken[t] = step;
      if (failed[t] < 0)
        for (int k = 1; k <= L; ++k)
          if (!S[k].allFinite()) failed[t] = step;
    });
  });

  RelaxResult result;
  result.steps = taken[0];
  for (std::size_t t = 0; t < failed.size(); ++t) {
    if (failed[t] >= 0 && (result.failed_step < 0 || failed[t] < result.failed_step)) {
      result.status = Status::Diverged;
      result.failed_step = failed[t];
      result.steps = taken[t];
    }
  }
  return result;
}

}  // namespace eqcore
