// A whole Equilibrium Propagation training step on a minibatch in one kernel call: free
// phase, nudged phase(s) and the parameter update, with the input drive computed once for all
// phases and the update accumulated straight into the weights (no gradient temporaries).
#pragma once

#include "eqcore/network.hpp"
#include "eqcore/relax.hpp"

namespace eqcore {

template <class T>
struct EpStepOptions {
  Index free_steps = 20;
  Index nudged_steps = 4;
  T dt = T(0.5);
  T beta = T(1);           // signed: a random sign is the caller's choice
  bool clip = true;
  bool symmetric = false;  // nudge at +beta and -beta, both from s0
  bool free_sweep = false;  // free phase by even/odd sweeps (hard sigmoid, clip; see Relaxer::sweep)
  std::vector<T> learning_rates;  // per k = 0..L-1: for W_k and b_{k+1}
  int threads = 1;
};

template <class T>
struct EpWorkspace {
  std::vector<Matrix<T>> nudged, rho_a, rho_b;
  Matrix<T> delta1, drive;
};

// theta <- theta - lr * g with the EP estimate
//   one-sided: g = (dE/dtheta(s^beta) - dE/dtheta(s0)) / beta
//   symmetric: g = (dE/dtheta(s^beta) - dE/dtheta(s^-beta)) / (2 beta)
// where s0 = `free_steps` Euler steps from `state`, and s^beta = `nudged_steps` steps of the
// nudged dynamics from s0. dE/dW_k = -rho(s_k)^T rho(s_{k+1}) / B, so the update is
//   W_k += lr_k / (beta' B) (rho(a_k)^T rho(a_{k+1}) - rho(b_k)^T rho(b_{k+1})),  rho(a_0) = rho(b_0) = x
// with (a, b) = (s^beta, s0) or (s^beta, s^-beta), beta' = beta or 2 beta.
//   weights, biases  writable views of the parameters `net` reads (weights[k]: (n_k, n_{k+1}))
//   x (B, n_0); target (B, n_L)
//   state            layers (B, n_k): the free phase's start, overwritten with s0 (persistent particles)
// If any state becomes non-finite the parameters are left untouched and Diverged is returned.
template <class T>
RelaxResult ep_step(const Net<T>& net, const LayerPtrs<T>& weights, const LayerPtrs<T>& biases, const T* x, Index B,
                    const LayerPtrs<T>& state, const T* target, const EpStepOptions<T>& opt) {
  const int L = net.layers();
  const int requested = threads_for(B, opt.threads);
  // Batch-sized buffers, kept by the calling thread between calls (same sizes every minibatch;
  // allocating them afresh cost page faults). Used through references: inside the team below,
  // the name of a thread_local would mean each worker's own instance.
  static thread_local EpWorkspace<T> kept;
  EpWorkspace<T>& ws = kept;
  auto &nudged = ws.nudged, &rho_a = ws.rho_a, &rho_b = ws.rho_b;
  auto &delta1 = ws.delta1, &drive = ws.drive;  // rho(a_1) - rho(b_1); x W_0 + b_1 for every phase
  detail::resize_layers(net, B, nudged);
  detail::resize_layers(net, B, rho_a);
  detail::resize_layers(net, B, rho_b);
  delta1.resize(B, net.size(1));
  LayerPtrs<T> nudged_ptrs;
  for (int k = 1; k <= L; ++k) nudged_ptrs.push_back(nudged[k].data());
  std::vector<Index> failed(static_cast<std::size_t>(requested), -1);
  // The W_0 update walks a sparse x by pixel: its column lists, made with the drive.
  TeamInputDrive<T> input(net, x, B, drive, true);

  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    run_team(requested, [&](int t, int nt) {
      const bool sparse_x = input.compute(t, nt);
      const Range block = part(B, t, nt);
      const Index tile = std::min(block.size(), kTileRows);
      Relaxer<Act, T> w(net, tile);
      Index& fail = failed[static_cast<std::size_t>(t)];
      auto run = [&](Index steps, T beta, const T* y) {
        for (Index step = 0; step < steps; ++step) w.step(opt.dt, beta, y, opt.clip);
      };
      auto keep_rho = [&](std::vector<Matrix<T>>& into, Range r) {
        for (int k = 1; k <= L; ++k) into[k].middleRows(r.begin, r.size()) = w.rho(k);
      };
      auto start_nudged_from_free = [&](Range r) {
        for (int k = 1; k <= L; ++k)
          nudged[k].middleRows(r.begin, r.size()) = detail::rows_of(static_cast<const T*>(state[k - 1]), net.size(k), r);
        w.rebind_state(nudged_ptrs, r);
      };
      for (Index first = block.begin; first < block.end; first += tile) {
        const Range r{first, std::min(first + tile, block.end)};
        w.bind(drive.data(), state, r);
        if (opt.free_sweep)
          for (Index step = 0; step < opt.free_steps; ++step) w.sweep(T(0), nullptr);
        else
          run(opt.free_steps, T(0), nullptr);
        if (!detail::rows_finite(net, state, r, 1)) fail = opt.free_steps;
        if (!opt.symmetric) keep_rho(rho_b, r);
        start_nudged_from_free(r);
        run(opt.nudged_steps, opt.beta, target);
        keep_rho(rho_a, r);
        if (opt.symmetric) {
          if (!detail::rows_finite(net, nudged_ptrs, r, 1)) fail = opt.free_steps + opt.nudged_steps;
          start_nudged_from_free(r);
          run(opt.nudged_steps, -opt.beta, target);
          keep_rho(rho_b, r);
        }
        if (!detail::rows_finite(net, nudged_ptrs, r, 1)) fail = opt.free_steps + opt.nudged_steps;
        delta1.middleRows(r.begin, r.size()) =
            rho_a[1].middleRows(r.begin, r.size()) - rho_b[1].middleRows(r.begin, r.size());
      }
      team_barrier();  // every row's phases are done before any parameter moves
      for (int j = 0; j < nt; ++j)
        if (failed[static_cast<std::size_t>(j)] >= 0) return;  // leave the parameters untouched
      const ConstMatrixMap<T> X(x, B, net.size(0));
      RowVector<T> bias_step(net.max_size());
      const T beta_eff = opt.symmetric ? T(2) * opt.beta : opt.beta;
      for (int k = 0; k < L; ++k) {
        const T c = opt.learning_rates[static_cast<std::size_t>(k)] / (beta_eff * static_cast<T>(B));
        MatrixMap<T> Wk(weights[static_cast<std::size_t>(k)], net.size(k), net.size(k + 1));
        if (k == 0) {  // by columns, the slice of W_0 this thread's input drive read
          const Range cols = TeamInputDrive<T>::columns(net, t, nt);
          if (sparse_x)
            sparse_input_update(TeamInputDrive<T>::thread_columns(), delta1.data(), net.size(1), c, cols, weights[0]);
          else if (cols.size() > 0)
            Wk.middleCols(cols.begin, cols.size()).noalias() +=
                c * X.transpose() * delta1.middleCols(cols.begin, cols.size());
        } else if (net.size(k + 1) <= kThinLayer) {  // no GEMM: the same bits for any thread count
          thin_weight_update(rho_a[k].data(), rho_a[k + 1].data(), rho_b[k].data(), rho_b[k + 1].data(), B,
                             net.size(k), net.size(k + 1), c,
                             aligned_part(net.size(k), Eigen::internal::packet_traits<T>::size, t, nt), weights[k]);
        } else {  // wide into wide: a GEMM on this thread's rows of W_k
          const Range rows = part(net.size(k), t, nt);
          auto G = Wk.middleRows(rows.begin, rows.size());
          G.noalias() += c * rho_a[k].middleCols(rows.begin, rows.size()).transpose() * rho_a[k + 1];
          G.noalias() -= c * rho_b[k].middleCols(rows.begin, rows.size()).transpose() * rho_b[k + 1];
        }
        const Range cols = part(net.size(k + 1), t, nt);
        RowVectorMap<T> bk(biases[static_cast<std::size_t>(k)], net.size(k + 1));
        auto step = bias_step.head(cols.size());
        detail::column_sums(
            rho_a[k + 1].middleCols(cols.begin, cols.size()) - rho_b[k + 1].middleCols(cols.begin, cols.size()), c,
            step);
        bk.segment(cols.begin, cols.size()) += step;
      }
    });
  });
  RelaxResult result;
  result.steps = opt.free_steps + opt.nudged_steps;
  for (Index f : failed)
    if (f >= 0 && (result.failed_step < 0 || f < result.failed_step)) {
      result.status = Status::Diverged;
      result.failed_step = f;
    }
  return result;
}

}  // namespace eqcore
