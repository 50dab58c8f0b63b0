// The fused relaxation loop: many Euler steps of s <- s - dt dE^beta/ds for a whole batch in
// one call. All layers update synchronously from the previous state.
#pragma once

#include "eqcore/activation.hpp"
#include "eqcore/network.hpp"
#include "eqcore/parallel.hpp"
#include "eqcore/products.hpp"
#include "eqcore/types.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>

namespace eqcore {

namespace detail {

// One Euler step for one example's layer (n contiguous entries), in place:
//   s <- s - dt (s - rho'(s) u [+ beta (s - y)]),  u = other + add,  then clip to [0, 1].
// r = rho(s) before the step; with Act::fused_rho it is updated to rho(s) after the step in
// the same pass. `other` is read only when HasOther. With Measure, returns the largest
// |change| (a loop-carried max: measurably slower, so only when a tolerance needs it).
// Written on Eigen packets (full-width vectors, masks for the hard sigmoid's rho'): GCC's
// auto-vectorisation of the same loop used half-width vectors and shuffled the clip's masks
// through integer registers, at several times the cost. No FMA, so the scalar tail rounds
// like the packets.
template <class Act, bool Clip, bool Nudge, bool HasOther, bool Measure, class T>
T euler_row_impl(T* __restrict s, T* __restrict r, const T* __restrict other, const T* __restrict add,
                 const T* __restrict y, Index n, T dt, T beta) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<T>::type;
  constexpr Index kLanes = packet_traits<T>::size;
  const Packet pdt = pset1<Packet>(dt), pbeta = pset1<Packet>(beta), zero = pset1<Packet>(T(0)),
               one = pset1<Packet>(T(1));
  Packet plargest = zero;
  Index j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Packet sj = ploadu<Packet>(s + j);
    const Packet u = HasOther ? padd(ploadu<Packet>(other + j), ploadu<Packet>(add + j)) : ploadu<Packet>(add + j);
    Packet grad = psub(sj, Act::pdrho_times(sj, ploadu<Packet>(r + j), u));
    if (Nudge) grad = padd(grad, pmul(pbeta, psub(sj, ploadu<Packet>(y + j))));
    Packet next = psub(sj, pmul(pdt, grad));
    if (Clip) next = pmin(pmax(next, zero), one);
    if (Measure) plargest = pmax(plargest, pabs(psub(next, sj)));
    pstoreu(s + j, next);
    if (Act::fused_rho) pstoreu(r + j, Act::prho(next));
  }
  T largest = Measure ? predux_max(plargest) : T(0);
  for (; j < n; ++j) {  // the same operations on one lane
    const Packet sj = pset1<Packet>(s[j]);
    const Packet u = pset1<Packet>(HasOther ? other[j] + add[j] : add[j]);
    Packet grad = psub(sj, Act::pdrho_times(sj, pset1<Packet>(r[j]), u));
    if (Nudge) grad = padd(grad, pmul(pbeta, psub(sj, pset1<Packet>(y[j]))));
    Packet next = psub(sj, pmul(pdt, grad));
    if (Clip) next = pmin(pmax(next, zero), one);
    const T value = pfirst(next);
    if (Measure) largest = std::max(largest, std::abs(value - s[j]));
    s[j] = value;
    if (Act::fused_rho) r[j] = pfirst(Act::prho(next));
  }
  return largest;
}

// s <- clip(u) (or clip((u + beta y) / (1 + beta)) with a target), r <- s (the hard sigmoid's
// rho on [0, 1]), for n contiguous entries; returns the largest |change| when measure.
template <class T>
T jump_to_minimiser(T* __restrict s, T* __restrict r, const T* __restrict u, const T* __restrict y, Index n, T beta,
                    bool measure) {
  // On Eigen packets, like euler_row_impl (GCC's own vectorisation of the clip was poor).
  using namespace Eigen::internal;
  using Packet = typename packet_traits<T>::type;
  constexpr Index kLanes = packet_traits<T>::size;
  const Packet zero = pset1<Packet>(T(0)), one = pset1<Packet>(T(1)), pbeta = pset1<Packet>(beta),
               scale = pset1<Packet>(T(1) / (T(1) + beta));
  Packet plargest = zero;
  auto next_of = [&](const Packet& uj, const Packet& yj) {
    const Packet v = y ? pmul(padd(uj, pmul(pbeta, yj)), scale) : uj;
    return pmin(pmax(v, zero), one);
  };
  Index j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Packet next = next_of(ploadu<Packet>(u + j), y ? ploadu<Packet>(y + j) : zero);
    if (measure) plargest = pmax(plargest, pabs(psub(next, ploadu<Packet>(s + j))));
    pstoreu(s + j, next);
    pstoreu(r + j, next);
  }
  T largest = measure ? predux_max(plargest) : T(0);
  for (; j < n; ++j) {  // the same operations on one lane
    const T next = pfirst(next_of(pset1<Packet>(u[j]), pset1<Packet>(y ? y[j] : T(0))));
    if (measure) largest = std::max(largest, std::abs(next - s[j]));
    s[j] = next;
    r[j] = next;
  }
  return largest;
}

// Chooses the compiled variant, so the element loop has no run-time branch.
template <class Act, class T>
T euler_row(T* s, T* r, const T* other, const T* add, const T* y, Index n, T dt, T beta, bool clip, bool has_other,
            bool measure) {
  auto pick = [&](auto clip_c, auto nudge_c, auto other_c, auto measure_c) {
    return euler_row_impl<Act, decltype(clip_c)::value, decltype(nudge_c)::value, decltype(other_c)::value,
                          decltype(measure_c)::value>(s, r, other, add, y, n, dt, beta);
  };
  auto with_bool = [](bool b, auto&& f) {
    return b ? f(std::true_type{}) : f(std::false_type{});
  };
  return with_bool(clip, [&](auto c) {
    return with_bool(y != nullptr, [&](auto nu) {
      return with_bool(has_other, [&](auto o) { return with_bool(measure, [&](auto m) { return pick(c, nu, o, m); }); });
    });
  });
}

}  // namespace detail

// Rows relaxed together when no tolerance couples the whole batch: examples are independent,
// so a thread runs every time step on one tile before the next, keeping the tile's state,
// activations and drives (about 4 * tile * sum n_k scalars) in cache across steps.
constexpr Index kTileRows = 128;  // 32 measured 1.1-1.3x slower on 500- and 1000-wide nets

// The relaxation of one block of rows, owned by one thread. The constructor allocates every
// buffer (for up to max_rows rows); bind() and step() allocate nothing.
template <class Act, class T>
class Relaxer {
 public:
  // The buffers are this thread's, kept between calls (a training loop asks for the same sizes
  // every minibatch; fresh megabytes each call cost page faults): one Relaxer per thread at a time.
  Relaxer(const Net<T>& net, Index max_rows) : net_(net), R_(buffers().first), U_(buffers().second) {
    const auto L = static_cast<std::size_t>(net.layers());
    R_.resize(L + 1);
    U_.resize(L + 1);
    thin_.resize(L);
    for (int k = 1; k <= net.layers(); ++k) {
      R_[k].resize(max_rows * net.size(k));
      U_[k].resize(max_rows * net.size(k));
      if (k < net.layers() && net.size(k + 1) <= kThinLayer)
        thin_[k] = std::make_unique<ThinWeights<T>>(net.weights[static_cast<std::size_t>(k)], net.size(k), net.size(k + 1));
    }
  }

  // Binds rows r of the state arrays (layer k: (B, n_k)) and of `input_drive` (B, n_1), the
  // constant x W_0 + b_1 computed once for the batch (see input_drive()), and evaluates rho(s).
  void bind(const T* input_drive, const LayerPtrs<T>& state, Range r) {
    rows_ = r.size();
    input_drive_ = input_drive + r.begin * net_.size(1);
    rebind_state(state, r);
  }

  // Points at another state for the same rows of x (keeps the input drive).
  void rebind_state(const LayerPtrs<T>& state, Range r) {
    begin_ = r.begin;
    state_ = state;
    for (int k = 1; k <= net_.layers(); ++k) rho(k) = Act::rho(s(k).array());
  }

  // One synchronous Euler step s <- s - dt dE^beta/ds (then clip) on the bound rows; target
  // (B, n_L) or nullptr. With measure, returns the largest |change| of a unit (else 0).
  T step(T dt, T beta, const T* target, bool clip, bool measure = false) {
    const int L = net_.layers();
    // Drives from the current state, for every layer before any layer moves.
    for (int k = 2; k <= L; ++k) {
      if (const auto& thin = thin_[static_cast<std::size_t>(k - 1)])
        thin->times(R_[k - 1].data(), rows_, net_.biases[static_cast<std::size_t>(k - 1)], U_[k].data());
      else
        drive(k).noalias() = rho(k - 1) * net_.weight(k - 1);
    }
    for (int k = 1; k < L; ++k) {
      if (const auto& thin = thin_[static_cast<std::size_t>(k)])
        thin->times_transposed(R_[k + 1].data(), rows_, k == 1 ? nullptr : U_[k].data(), U_[k].data());
      else if (k == 1)
        drive(1).noalias() = rho(2) * net_.weight(1).transpose();
      else
        drive(k).noalias() += rho(k + 1) * net_.weight(k).transpose();
    }
    T largest = T(0);
    for (int k = 1; k <= L; ++k) {
      const Index n = net_.size(k);
      const bool nudge_here = target != nullptr && beta != T(0) && k == L;
      T* sk = s(k).data();
      T* rk = R_[k].data();
      const T* uk = U_[k].data();
      const T* y = nudge_here ? target + begin_ * n : nullptr;
      if (k == 1) {  // u = U + the input drive, both contiguous over the tile: one pass
        largest = std::max(largest, detail::euler_row<Act>(sk, rk, uk, input_drive_, y, rows_ * n, dt, beta, clip,
                                                           L > 1, measure));
      } else if (thin_[static_cast<std::size_t>(k - 1)]) {  // u = U, the bias already in it
        largest = std::max(largest, detail::euler_row<Act>(sk, rk, static_cast<const T*>(nullptr), uk, y, rows_ * n, dt, beta, clip, false,
                                                           measure));
      } else {  // u = U + b_k, row by row
        const T* bias = net_.biases[static_cast<std::size_t>(k - 1)];
        for (Index i = 0; i < rows_; ++i)
          largest = std::max(largest, detail::euler_row<Act>(sk + i * n, rk + i * n, uk + i * n, bias,
                                                             y ? y + i * n : nullptr, n, dt, beta, clip, true, measure));
      }
      if (!Act::fused_rho) rho(k) = Act::rho(s(k).array());
    }
    return largest;
  }

  // One even/odd sweep (hard sigmoid with clipping only): the odd layers 1, 3, ... jump to their
  // minimiser given their neighbours, then the even layers given the new odd ones. With no
  // connections inside a layer and rho(s) = s on [0, 1], E restricted to layer k is
  // 1/2 |s_k|^2 - s_k . u_k [+ beta/2 |s_k - y|^2 at the output], minimised unit by unit at
  //   s_k = clip(u_k, 0, 1)   or   clip((u_L + beta y) / (1 + beta), 0, 1),
  // u_k the drive of layer k. Exact block-coordinate descent: E never increases, and its fixed
  // points are those of the clipped Euler dynamics (s = clip(u)), reached in far fewer sweeps
  // than Euler steps. Returns the largest |change| when measure.
  T sweep(T beta, const T* target, bool measure = false) {
    const int L = net_.layers();
    T largest = T(0);
    for (int parity = 1; parity >= 0; --parity)
      for (int k = 2 - parity; k <= L; k += 2) {
        layer_drive(k);
        const Index count = rows_ * net_.size(k);
        const bool nudge_here = target != nullptr && beta != T(0) && k == L;
        const T* y = nudge_here ? target + begin_ * net_.size(k) : nullptr;
        largest = std::max(largest, detail::jump_to_minimiser(s(k).data(), R_[k].data(), U_[k].data(), y, count, beta,
                                                              measure));
      }
    return largest;
  }

  MatrixMap<T> s(int k) { return {state_[k - 1] + begin_ * net_.size(k), rows_, net_.size(k)}; }
  MatrixMap<T> rho(int k) { return {R_[k].data(), rows_, net_.size(k)}; }
  Index rows() const { return rows_; }

 private:
  MatrixMap<T> drive(int k) { return {U_[k].data(), rows_, net_.size(k)}; }

  // U_k = (input drive, or rho_{k-1} W_{k-1} + b_k) + rho_{k+1} W_k^T, from the current rho.
  void layer_drive(int k) {
    const int L = net_.layers();
    if (k == 1 && L > 1 && thin_[1]) {  // the input drive as the base of the thin product
      thin_[1]->times_transposed(R_[2].data(), rows_, input_drive_, U_[1].data());
      return;
    }
    if (k == 1) {
      std::copy_n(input_drive_, rows_ * net_.size(1), U_[1].data());
    } else if (const auto& thin = thin_[static_cast<std::size_t>(k - 1)]) {
      thin->times(R_[k - 1].data(), rows_, net_.biases[static_cast<std::size_t>(k - 1)], U_[k].data());
    } else {
      drive(k).noalias() = rho(k - 1) * net_.weight(k - 1);
      drive(k).rowwise() += net_.bias(k);
    }
    if (k < L) {
      if (const auto& thin = thin_[static_cast<std::size_t>(k)])
        thin->times_transposed(R_[k + 1].data(), rows_, U_[k].data(), U_[k].data());
      else
        drive(k).noalias() += rho(k + 1) * net_.weight(k).transpose();
    }
  }

  const Net<T>& net_;
  // Eigen vectors, not std::vector: Eigen aligns them, so its element-wise loops never peel a
  // different number of scalar iterations from one call to the next (bit-reproducibility).
  using Buffer = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  static std::pair<std::vector<Buffer>, std::vector<Buffer>>& buffers() {
    static thread_local std::pair<std::vector<Buffer>, std::vector<Buffer>> kept;
    return kept;
  }
  std::vector<Buffer>& R_;  // rho(s_k)
  std::vector<Buffer>& U_;  // the drive of layer k from the other free layers
  std::vector<std::unique_ptr<ThinWeights<T>>> thin_;  // [k]: W_k packed when layer k + 1 is thin
  const T* input_drive_ = nullptr;
  LayerPtrs<T> state_;
  Index begin_ = 0, rows_ = 0;
};

// The input drive D = x W_0 + b_1 (B, n_1) for the whole batch, constant during a relaxation,
// computed once per call by the team that then relaxes the batch: every thread of the team
// calls compute(t, nt). A mostly-zero x (at most kSparseInputDensity non-zeros: images) takes
// the sparse path, one pass over a row of W_0 per non-zero; otherwise a GEMM. Either way W_0 is
// split between the threads by columns (whole packets, see columns()): each thread reads only
// its slice of W_0, and the EP update, split the same way, writes only that slice, so the slice
// stays in the thread's cache from call to call instead of moving between cores. Each thread
// lists x's non-zeros itself, by row (~9 us at B 64, 784 inputs) and for the EP update also by
// column (~25 us more): redundant work, but the lists then never cross cores and no thread
// waits for another's before its drive (with each thread listing half, the update's reads of
// the other half from the other core cost about what the halving saved, measured at B 64).
template <class T>
class TeamInputDrive {
 public:
  // with_columns: also list x's non-zeros by column, for the EP update (thread_columns()).
  TeamInputDrive(const Net<T>& net, const T* x, Index B, Matrix<T>& D, bool with_columns)
      : net_(net), x_(x), B_(B), D_(D), with_columns_(with_columns) {
    D.resize(B, net.size(1));
  }

  // Thread t's columns of W_0 and D.
  static Range columns(const Net<T>& net, int t, int nt) {
    return aligned_part(net.size(1), Eigen::internal::packet_traits<T>::size, t, nt);
  }

  // Fills D, and returns whether x took the sparse path (the same answer in every thread).
  // Returns after a barrier: D is complete for every thread.
  bool compute(int t, int nt) {
    const Index n0 = net_.size(0);
    const Range cols = columns(net_, t, nt);
    SparseRows<T>& rows = thread_rows();
    const bool sparse = compress_rows(x_, B_, n0, rows);
    if (sparse) {
      if (with_columns_) transpose(rows, n0, thread_columns_mutable());
      sparse_input_drive(net_, rows, cols, D_.data());
    } else if (cols.size() > 0) {
      auto block = D_.middleCols(cols.begin, cols.size());
      block.noalias() = ConstMatrixMap<T>(x_, B_, n0) * net_.weight(0).middleCols(cols.begin, cols.size());
      block.rowwise() += net_.bias(1).segment(cols.begin, cols.size());
    }
    team_barrier();
    return sparse;
  }

  // The calling thread's column lists of x, from its last compute() that took the sparse path
  // with_columns.
  static const SparseRows<T>& thread_columns() { return thread_columns_mutable(); }

 private:
  // Per thread, kept between calls (same sizes every minibatch).
  static SparseRows<T>& thread_rows() {
    static thread_local SparseRows<T> kept;
    return kept;
  }
  static SparseRows<T>& thread_columns_mutable() {
    static thread_local SparseRows<T> kept;
    return kept;
  }

  const Net<T>& net_;
  const T* x_;
  Index B_;
  Matrix<T>& D_;
  bool with_columns_;
};

// x W_0 + b_1 into D (B, n_1) with a team of its own; returns whether x took the sparse path.
template <class T>
bool input_drive(const Net<T>& net, const T* x, Index B, Matrix<T>& D, int threads) {
  const int nt = threads_for(B, threads);
  TeamInputDrive<T> input(net, x, B, D, false);
  bool sparse = false;
  run_team(nt, [&](int t, int team) {
    const bool s = input.compute(t, team);
    if (t == 0) sparse = s;
  });
  return sparse;
}

template <class T>
struct RelaxOptions {
  Index steps = 20;  // maximum number of Euler steps
  T dt = T(0.5);
  T beta = T(0);     // nudging strength; needs a target when != 0
  bool clip = false; // project states onto [0, 1] after each step (the 2017 paper)
  T tol = T(0);      // stop after the first step whose largest |s_{t+1} - s_t| is < tol; 0 = never
  bool sweep = false;  // even/odd sweeps to each layer's minimiser instead of Euler steps
                       // (hard sigmoid with clip; dt unused): see Relaxer::sweep
  int threads = 1;
};

struct RelaxResult {
  Status status = Status::Ok;
  Index steps = 0;         // steps taken
  Index failed_step = -1;  // with Status::Diverged: the step at which a non-finite state was seen
};

namespace detail {
template <class T>
bool rows_finite(const Net<T>& net, const LayerPtrs<T>& state, Range r, int first_layer) {
  for (int k = first_layer; k <= net.layers(); ++k)
    if (!all_finite(rows_of(static_cast<const T*>(state[k - 1]), net.size(k), r))) return false;
  return true;
}
}  // namespace detail

// Relaxes `state` in place.
//   x           (B, n_0)
//   state       layer k: (B, n_k), k = 1..L; read as the initial state, overwritten
//   target      (B, n_L), or nullptr when opt.beta == 0
//   trajectory  empty, or layer k: (opt.steps + 1, B, n_k); entry t receives the state after
//               t steps (entry 0 the initial state); entries past the last step are untouched.
// No argument may alias another. Allocation happens once per call and thread, before the loop.
// Without a tolerance each thread runs all steps tile by tile (kTileRows rows); with one, the
// whole batch moves in lockstep so that all examples stop at the same step.
template <class T>
RelaxResult relax(const Net<T>& net, const T* x, Index B, const LayerPtrs<T>& state, const T* target,
                  const RelaxOptions<T>& opt, const LayerPtrs<T>& trajectory) {
  const int L = net.layers();
  const int requested = threads_for(B, opt.threads);
  const T* y = (opt.beta != T(0)) ? target : nullptr;
  const bool use_tol = opt.tol > T(0);
  const T inf = std::numeric_limits<T>::infinity();
  TeamMax<T> largest(requested);
  std::vector<Index> failed(static_cast<std::size_t>(requested), -1);
  std::vector<Index> taken(static_cast<std::size_t>(requested), 0);
  // Kept by the calling thread between calls, like the Relaxer's buffers. A reference: inside
  // the team below, the name of a thread_local would mean each worker's own instance.
  static thread_local Matrix<T> kept_drive;
  Matrix<T>& drive = kept_drive;
  TeamInputDrive<T> input(net, x, B, drive, false);

  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    run_team(requested, [&](int t, int nt) {
      input.compute(t, nt);
      const Range block = part(B, t, nt);
      const Index tile = use_tol ? block.size() : std::min(block.size(), kTileRows);
      Relaxer<Act, T> w(net, tile);
      auto record = [&](Range r, Index step) {
        if (trajectory.empty()) return;
        for (int k = 1; k <= L; ++k)
          detail::rows_of(trajectory[k - 1] + step * B * net.size(k), net.size(k), r) =
              detail::rows_of(static_cast<const T*>(state[k - 1]), net.size(k), r);
      };
      Index& fail = failed[static_cast<std::size_t>(t)];
      Index& done = taken[static_cast<std::size_t>(t)];
      for (Index first = block.begin; first < block.end; first += tile) {
        const Range r{first, std::min(first + tile, block.end)};
        w.bind(drive.data(), state, r);
        record(r, 0);
        Index step = 0;
        while (step < opt.steps) {
          const T change = opt.sweep ? w.sweep(opt.beta, y, use_tol) : w.step(opt.dt, opt.beta, y, opt.clip, use_tol);
          ++step;
          // A non-finite value anywhere reaches the (small) output layer within L steps through
          // the products, so checking that layer each step is enough to stop a divergence early.
          const bool bad = !all_finite(w.s(L));
          if (bad && (fail < 0 || step < fail)) fail = step;
          record(r, step);
          if (use_tol) {
            const T global = largest.reduce(step, t, nt, bad ? inf : change);
            if (global == inf || global < opt.tol) break;  // same decision in every thread
          } else if (bad) {
            break;
          }
        }
        done = std::max(done, step);
        if (fail < 0 && !detail::rows_finite(net, state, r, 1)) fail = step;
      }
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
