// The gradient algorithms of the seed paper that need their own time loops: Recurrent
// Backpropagation, a conjugate-gradient solver on H (for the implicit gradient and Newton
// steps), and backpropagation through the free phase's Euler steps. EP needs only relax().
#pragma once

#include "eqcore/hessian.hpp"
#include "eqcore/network.hpp"
#include "eqcore/relax.hpp"

#include <cmath>
#include <limits>

namespace eqcore {

struct RbpResult {
  Status status = Status::Ok;
  Index steps = 0;         // steps taken
  Index failed_step = -1;  // with Status::Diverged: the step at which Sbar became non-finite
};

// Recurrent Backpropagation (Eq. 8-11 of the paper) at a free fixed point s0:
//   Sbar_0 = dC/ds(s0) = (s0_L - y on the output layer, 0 elsewhere);
//   Sbar_{t+1} = Sbar_t - dt H(s0) Sbar_t.
// Thetabar_t = -dt (d2E/dtheta ds)(s0) sum_{n<t} Sbar_n, so this returns the running sum
// rather than a parameter-shaped result: the caller applies the mixed product once.
//   x (B, n_0); s0, sbar, sum: layers (B, n_k); target (B, n_L)
//   tol > 0: stop after the first step with max |Sbar| < tol over the batch.
//   trajectory: empty or layers (steps + 1, B, n_k) receiving Sbar_t.
template <class T>
RbpResult rbp(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s0, const T* target, Index steps, T dt,
              T tol, const LayerPtrs<T>& sbar, const LayerPtrs<T>& sum, const LayerPtrs<T>& trajectory, int threads) {
  const int L = net.layers();
  const int requested = threads_for(B, threads);
  TeamMax<T> largest(requested);
  std::vector<Index> taken(static_cast<std::size_t>(requested), 0), failed(static_cast<std::size_t>(requested), -1);
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    run_team(requested, [&](int t, int nt) {
      const Range r = part(B, t, nt);
      LocalHessian<Act, T> h(net, r.size());
      h.set_state(detail::rows_of(x, net.size(0), r), s0, r);
      std::vector<Matrix<T>> S, HS, V;
      detail::resize_layers(net, r.size(), S);
      detail::resize_layers(net, r.size(), HS);
      detail::resize_layers(net, r.size(), V);
      for (int k = 1; k <= L; ++k) {
        S[k].setZero();
        V[k].setZero();
      }
      S[L] = detail::rows_of(s0[L - 1], net.size(L), r) - detail::rows_of(target, net.size(L), r);
      auto record = [&](Index step) {
        if (trajectory.empty()) return;
        for (int k = 1; k <= L; ++k)
          MatrixMap<T>(trajectory[k - 1] + (step * B + r.begin) * net.size(k), r.size(), net.size(k)) = S[k];
      };
      record(0);
      Index step = 0;
      while (step < steps) {
        h.apply(S, HS);
        T local = T(0);
        for (int k = 1; k <= L; ++k) {
          V[k] += S[k];
          S[k] -= dt * HS[k];
          local = std::max(local, S[k].cwiseAbs().maxCoeff());
        }
        ++step;
        record(step);
        // Sbar_t = (I - dt H)^t Sbar_0 grows without bound when an eigenvalue of dt H leaves
        // (0, 2): H not positive definite at s0 (not a stable fixed point), or dt too large.
        const bool bad = !std::isfinite(local);
        if (bad) failed[t] = step;
        if (tol > T(0)) {
          const T global = largest.reduce(step, t, nt, local);
          if (!std::isfinite(global) || global < tol) break;  // same decision in every thread
        } else if (bad) {
          break;
        }
      }
      taken[t] = step;
      detail::store_rows(net, S, r, sbar);
      detail::store_rows(net, V, r, sum);
    });
  });
  RbpResult result;
  result.steps = taken[0];
  for (Index f : failed)
    if (f >= 0 && (result.failed_step < 0 || f < result.failed_step)) {
      result.status = Status::Diverged;
      result.failed_step = f;
    }
  return result;
}

struct SolveResult {
  bool positive_definite = true;
  Index iterations = 0;  // largest over the examples
  double residual = 0;   // largest |H z - rhs| / |rhs| over the examples
};

// Solves (H(s) + beta e_L e_L^T) z = rhs for every example by conjugate gradients. H is
// block-diagonal over examples, so each example runs its own CG (own step sizes) and stops
// on its own when |residual| <= tol |rhs|. Fails (positive_definite = false) when a search
// direction has p.Hp <= 0.
//   s, rhs, z: layers (B, n_k)
template <class T>
SolveResult solve_hessian(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s,
                          const ConstLayerPtrs<T>& rhs, T beta, T tol, Index max_iter, const LayerPtrs<T>& z,
                          int threads) {
  const int L = net.layers();
  const int requested = threads_for(B, threads);
  std::vector<SolveResult> results(static_cast<std::size_t>(requested));
  using Column = Eigen::Array<T, Eigen::Dynamic, 1>;
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    run_team(requested, [&](int t, int nt) {
      const Range r = part(B, t, nt);
      const Index rows = r.size();
      LocalHessian<Act, T> h(net, rows);
      h.set_state(detail::rows_of(x, net.size(0), r), s, r);
      std::vector<Matrix<T>> Z, Res, P, HP;
      for (auto* m : {&Z, &Res, &P, &HP}) detail::resize_layers(net, rows, *m);
      detail::load_rows(net, rhs, r, Res);
      Column rr = Column::Zero(rows), pHp(rows), alpha(rows), next(rows), goal(rows);
      for (int k = 1; k <= L; ++k) {
        Z[k].setZero();
        P[k] = Res[k];
        rr += Res[k].rowwise().squaredNorm().array();
      }
      goal = tol * tol * rr;  // squared target residual per example
      SolveResult& out = results[static_cast<std::size_t>(t)];
      Index it = 0;
      while (it < max_iter && (rr > goal).any()) {
        h.apply(P, HP, beta);
        pHp.setZero();
        for (int k = 1; k <= L; ++k) pHp += (P[k].array() * HP[k].array()).rowwise().sum();
        const Eigen::Array<bool, Eigen::Dynamic, 1> active = rr > goal;
        if (((pHp <= T(0)) && active).any() || !all_finite(pHp)) {
          out.positive_definite = false;
          break;
        }
        alpha = active.select(rr / pHp, T(0));
        next.setZero();
        for (int k = 1; k <= L; ++k) {
          Z[k].array() += P[k].array().colwise() * alpha;
          Res[k].array() -= HP[k].array().colwise() * alpha;
          next += Res[k].rowwise().squaredNorm().array();
        }
        const Column ratio = active.select(next / rr, T(0));
        for (int k = 1; k <= L; ++k) P[k].array() = Res[k].array() + P[k].array().colwise() * ratio;
        rr = active.select(next, rr);
        ++it;
      }
      out.iterations = it;
      const Column norm2 = goal / (tol * tol);
      for (Index i = 0; i < rows; ++i)
        if (norm2(i) > T(0)) out.residual = std::max(out.residual, std::sqrt(double(rr(i) / norm2(i))));
      detail::store_rows(net, Z, r, z);
    });
  });
  SolveResult total;
  for (const auto& one : results) {
    total.positive_definite = total.positive_definite && one.positive_definite;
    total.iterations = std::max(total.iterations, one.iterations);
    total.residual = std::max(total.residual, one.residual);
  }
  return total;
}

// Backpropagation through time over the free phase: the exact gradient of
// J_T = mean_b C(s_T) w.r.t. the parameters, where s_T is reached from `state` by T Euler
// steps s <- s - dt dE/ds (projected onto [0, 1] when clip; the projection's derivative is
// taken as 1 strictly inside (0, 1) and 0 on the boundary).
//   x (B, n_0); state: layers (B, n_k) (initial state, not modified); target (B, n_L)
//   gW[k] (n_k, n_{k+1}), gb[k-1] (n_k): the gradient, averaged over the batch.
// Stores the trajectory and the per-step products: O(T B sum n_k) memory.
template <class T>
RelaxResult bptt(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& state, const T* target, Index steps,
                 T dt, bool clip, const LayerPtrs<T>& gW, const LayerPtrs<T>& gb, int threads) {
  const int L = net.layers();
  // Forward: the trajectory s_0..s_T, layer k stored as ((T + 1) B, n_k).
  std::vector<Matrix<T>> traj(static_cast<std::size_t>(L + 1)), Rall, Pall;
  LayerPtrs<T> traj_ptrs, final_ptrs;
  for (int k = 1; k <= L; ++k) {
    traj[k].resize((steps + 1) * B, net.size(k));
    traj_ptrs.push_back(traj[k].data());
  }
  std::vector<Matrix<T>> final_state(static_cast<std::size_t>(L + 1));
  for (int k = 1; k <= L; ++k) {
    final_state[k] = ConstMatrixMap<T>(state[k - 1], B, net.size(k));
    final_ptrs.push_back(final_state[k].data());
  }
  RelaxOptions<T> opt;
  opt.steps = steps;
  opt.dt = dt;
  opt.clip = clip;
  opt.threads = threads;
  const RelaxResult forward = relax(net, x, B, final_ptrs, static_cast<const T*>(nullptr), opt, traj_ptrs);
  if (forward.status != Status::Ok) return forward;

  // Backward, per block of rows: the adjoint a_t = dJ_T/ds_t (times B), and for every step
  // P_k(t) = rho'(s_t,k) * a~_{t+1,k} and rho(s_t,k), stacked over t for one GEMM per parameter.
  detail::resize_layers(net, steps * B, Rall);
  detail::resize_layers(net, steps * B, Pall);
  Matrix<T> Psum1 = Matrix<T>::Zero(B, net.size(1));
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    parallel_for(B, threads, [&](Range r) {
      const Index rows = r.size();
      const auto X = detail::rows_of(x, net.size(0), r);
      LocalHessian<Act, T> h(net, rows);
      std::vector<Matrix<T>> A, HA;
      detail::resize_layers(net, rows, A);
      detail::resize_layers(net, rows, HA);
      ConstLayerPtrs<T> at(static_cast<std::size_t>(L));
      auto point_at = [&](Index step) {
        for (int k = 1; k <= L; ++k) at[k - 1] = traj[k].data() + step * B * net.size(k);
      };
      for (int k = 1; k < L; ++k) A[k].setZero();
      point_at(steps);
      A[L] = detail::rows_of(at[L - 1], net.size(L), r) - detail::rows_of(target, net.size(L), r);
      for (Index step = steps - 1; step >= 0; --step) {
        if (clip) {  // through the projection of step `step` -> `step + 1`
          point_at(step + 1);
          for (int k = 1; k <= L; ++k) {
            const auto next = detail::rows_of(at[k - 1], net.size(k), r).array();
            A[k].array() *= ((next > T(0)) && (next < T(1))).template cast<T>();
          }
        }
        point_at(step);
        h.set_state(X, at, r);
        for (int k = 1; k <= L; ++k) {
          Pall[k].middleRows(step * B + r.begin, rows).array() = h.drho(k).array() * A[k].array();
          Rall[k].middleRows(step * B + r.begin, rows) = h.rho(k);
        }
        Psum1.middleRows(r.begin, rows) += Pall[1].middleRows(step * B + r.begin, rows);
        h.apply(A, HA);
        for (int k = 1; k <= L; ++k) A[k] -= dt * HA[k];
      }
    });
  });
  // dJ/dW_k = (dt / B) sum_t (P_k^T rho(s_{k+1}) + rho(s_k)^T P_{k+1}), with rho(s_0) = x, P_0 = 0.
  const ConstMatrixMap<T> X(x, B, net.size(0));
  const T scale = dt / static_cast<T>(B);
  detail::param_products(
      net, gW, gb, threads,
      [&](int k, Range rows, auto G) {
        if (k == 0) {
          G.noalias() = scale * X.middleCols(rows.begin, rows.size()).transpose() * Psum1;
        } else {
          G.noalias() = scale * Pall[k].middleCols(rows.begin, rows.size()).transpose() * Rall[k + 1];
          G.noalias() += scale * Rall[k].middleCols(rows.begin, rows.size()).transpose() * Pall[k + 1];
        }
      },
      [&](int k, Range cols, auto g) { detail::column_sums(Pall[k].middleCols(cols.begin, cols.size()), scale, g); });
  return forward;
}

}  // namespace eqcore
