// Energy, cost and their derivatives for a layered network (see shared/DESIGN.md §1).
//
// Conventions for every function here:
//   x       (B, n_0)          input, row-major
//   state   layer k: (B, n_k) for k = 1..L, row-major
//   target  (B, n_L)          may be nullptr where beta == 0
//   Results shaped like the state are per example; results shaped like the parameters are
//   averaged over the batch. Outputs must not alias inputs. `threads` splits the batch
//   (or, for parameter-shaped results, the rows of each parameter) over an OpenMP team.
#pragma once

#include "eqcore/activation.hpp"
#include "eqcore/parallel.hpp"
#include "eqcore/types.hpp"

namespace eqcore {
namespace detail {

template <class T>
ConstMatrixMap<T> rows_of(const T* p, Index cols, Range r) {
  return {p + r.begin * cols, r.size(), cols};
}
template <class T>
MatrixMap<T> rows_of(T* p, Index cols, Range r) {
  return {p + r.begin * cols, r.size(), cols};
}

// Per-layer buffers indexed by k = 1..L (entry 0 unused: the input is x itself).
template <class T>
void resize_layers(const Net<T>& net, Index rows, std::vector<Matrix<T>>& m) {
  m.resize(static_cast<std::size_t>(net.layers() + 1));
  for (int k = 1; k <= net.layers(); ++k) m[k].resize(rows, net.size(k));
}

// For the rows r of the state, writes rho(s_k) into R[k] and, when given, rho'(s_k) into
// (*D)[k] and rho''(s_k) into (*D2)[k], at row `offset` of those (already sized) buffers.
template <class Act, class T>
void eval_layers(const Net<T>& net, const ConstLayerPtrs<T>& s, Range r, Index offset, std::vector<Matrix<T>>& R,
                 std::vector<Matrix<T>>* D = nullptr, std::vector<Matrix<T>>* D2 = nullptr) {
  for (int k = 1; k <= net.layers(); ++k) {
    const auto S = rows_of(s[k - 1], net.size(k), r);
    const Index at = offset * net.size(k), count = r.size() * net.size(k);
    R[k].middleRows(offset, r.size()) = Act::rho(S.array());
    if (D) first_derivative<Act>(S.data(), R[k].data() + at, (*D)[k].data() + at, count);
    if (D2) second_derivative<Act>(S.data(), R[k].data() + at, (*D2)[k].data() + at, count);
  }
}

// rho(s_k) (and optionally rho') for the rows r, in buffers of r.size() rows.
template <class Act, class T>
void activations(const Net<T>& net, const ConstLayerPtrs<T>& s, Range r, std::vector<Matrix<T>>& R,
                 std::vector<Matrix<T>>* D = nullptr, std::vector<Matrix<T>>* D2 = nullptr) {
  resize_layers(net, r.size(), R);
  if (D) resize_layers(net, r.size(), *D);
  if (D2) resize_layers(net, r.size(), *D2);
  eval_layers<Act>(net, s, r, 0, R, D, D2);
}

// U = rho(s_{k-1}) W_{k-1} + rho(s_{k+1}) W_k^T + b_k   (the drive of layer k).
template <class T, class Out>
void drive(const Net<T>& net, int k, const ConstMatrixMap<T>& X, const std::vector<Matrix<T>>& R, Out&& U) {
  if (k == 1)
    U.noalias() = X * net.weight(0);
  else
    U.noalias() = R[k - 1] * net.weight(k - 1);
  if (k < net.layers()) U.noalias() += R[k + 1] * net.weight(k).transpose();
  U.rowwise() += net.bias(k);
}

}  // namespace detail

// Energy E(s) per example. out: (B).
template <class T>
void energy(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s, T* out, int threads) {
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    parallel_for(B, threads, [&](Range r) {
      std::vector<Matrix<T>> R;
      detail::activations<Act>(net, s, r, R);
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> e(out + r.begin, r.size());
      e.setZero();
      Matrix<T> P;
      for (int k = 1; k <= net.layers(); ++k) {
        e += T(0.5) * detail::rows_of(s[k - 1], net.size(k), r).rowwise().squaredNorm().array();
        e -= (R[k] * net.bias(k).transpose()).array();
      }
      for (int k = 0; k < net.layers(); ++k) {
        if (k == 0)
          P.noalias() = detail::rows_of(x, net.size(0), r) * net.weight(0);
        else
          P.noalias() = R[k] * net.weight(k);
        e -= (P.array() * R[k + 1].array()).rowwise().sum();
      }
    });
  });
}

// Cost C(s) = 1/2 |s_L - y|^2 per example. out: (B).
template <class T>
void cost(Index B, Index n_out, const T* s_out, const T* target, T* out) {
  ConstMatrixMap<T> S(s_out, B, n_out), Y(target, B, n_out);
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(out, B) = T(0.5) * (S - Y).rowwise().squaredNorm().array();
}

// dE^beta/ds per example (E^beta = E + beta C). out: layers like the state.
template <class T>
void energy_grad_state(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s, const T* target,
                       T beta, const LayerPtrs<T>& out, int threads) {
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    parallel_for(B, threads, [&](Range r) {
      std::vector<Matrix<T>> R, D;
      detail::activations<Act>(net, s, r, R, &D);
      const auto X = detail::rows_of(x, net.size(0), r);
      Matrix<T> U;
      for (int k = 1; k <= net.layers(); ++k) {
        detail::drive(net, k, X, R, U);
        const auto S = detail::rows_of(s[k - 1], net.size(k), r).array();
        auto G = detail::rows_of(out[k - 1], net.size(k), r).array();
        G = S - D[k].array() * U.array();
        if (k == net.layers() && beta != T(0))
          G += beta * (S - detail::rows_of(target, net.size(k), r).array());
      }
    });
  });
}

namespace detail {

// scale * (column sums of A) into g, summing the rows in order. Eigen's colwise().sum() may
// sum in a different order depending on the output's memory alignment, which would make
// results differ in the last bit between calls; this loop does not.
template <class A, class G>
void column_sums(const A& a, typename A::Scalar scale, G&& g) {
  g.setZero();
  for (Index i = 0; i < a.rows(); ++i) g += a.row(i);
  g *= scale;
}

// Parameter-shaped products averaged over the batch:
//   gW_k = scale * (A_k^T C_{k+1} + D_k^T E_{k+1}),  gb_k = scale * colsum(F_k)
// computed with the rows of each gW_k (and entries of gb_k) split over threads, so each
// output element is written by one thread in a fixed order.
template <class T, class WTerm, class BTerm>
void param_products(const Net<T>& net, const LayerPtrs<T>& gW, const LayerPtrs<T>& gb, int threads,
                    WTerm&& w_term, BTerm&& b_term) {
  for (int k = 0; k < net.layers(); ++k) {
    MatrixMap<T> G(gW[static_cast<std::size_t>(k)], net.size(k), net.size(k + 1));
    parallel_for(net.size(k), threads, [&](Range rows) { w_term(k, rows, G.middleRows(rows.begin, rows.size())); });
  }
  for (int k = 1; k <= net.layers(); ++k) {
    RowVectorMap<T> g(gb[static_cast<std::size_t>(k - 1)], net.size(k));
    parallel_for(net.size(k), threads, [&](Range cols) { b_term(k, cols, g.segment(cols.begin, cols.size())); });
  }
}

// rho(s_k) (and optionally rho') over the whole batch, k = 1..L, in parallel over rows.
template <class Act, class T>
void activations_full(const Net<T>& net, Index B, const ConstLayerPtrs<T>& s, int threads, std::vector<Matrix<T>>& R,
                      std::vector<Matrix<T>>* D = nullptr) {
  resize_layers(net, B, R);
  if (D) resize_layers(net, B, *D);
  parallel_for(B, threads, [&](Range r) { eval_layers<Act>(net, s, r, r.begin, R, D); });
}

}  // namespace detail

// dE/dtheta averaged over the batch: gW_k = -rho(s_k)^T rho(s_{k+1}) / B (rho(s_0) = x),
// gb_k = -mean rho(s_k). gW[k]: (n_k, n_{k+1}); gb[k-1]: (n_k).
template <class T>
void energy_grad_params(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s, const LayerPtrs<T>& gW,
                        const LayerPtrs<T>& gb, int threads) {
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    std::vector<Matrix<T>> R;
    detail::activations_full<Act>(net, B, s, threads, R);
    const ConstMatrixMap<T> X(x, B, net.size(0));
    const T scale = T(-1) / static_cast<T>(B);
    detail::param_products(
        net, gW, gb, threads,
        [&](int k, Range rows, auto G) {
          if (k == 0)
            G.noalias() = scale * X.middleCols(rows.begin, rows.size()).transpose() * R[1];
          else
            G.noalias() = scale * R[k].middleCols(rows.begin, rows.size()).transpose() * R[k + 1];
        },
        [&](int k, Range cols, auto g) { detail::column_sums(R[k].middleCols(cols.begin, cols.size()), scale, g); });
  });
}

// Mixed product (d2E/dtheta ds) v averaged over the batch, with P_k = rho'(s_k) * v_k:
//   gW_k = -(P_k^T rho(s_{k+1}) + rho(s_k)^T P_{k+1}) / B   (P_0 = 0, rho(s_0) = x)
//   gb_k = -mean P_k
template <class T>
void mixed_hvp(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s, const ConstLayerPtrs<T>& v,
               const LayerPtrs<T>& gW, const LayerPtrs<T>& gb, int threads) {
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    const int L = net.layers();
    std::vector<Matrix<T>> R, P;  // P_k first holds rho'(s_k), then rho'(s_k) * v_k
    detail::activations_full<Act>(net, B, s, threads, R, &P);
    parallel_for(B, threads, [&](Range r) {
      for (int k = 1; k <= L; ++k)
        P[k].middleRows(r.begin, r.size()).array() *= detail::rows_of(v[k - 1], net.size(k), r).array();
    });
    const ConstMatrixMap<T> X(x, B, net.size(0));
    const T scale = T(-1) / static_cast<T>(B);
    detail::param_products(
        net, gW, gb, threads,
        [&](int k, Range rows, auto G) {
          if (k == 0) {
            G.noalias() = scale * X.middleCols(rows.begin, rows.size()).transpose() * P[1];
          } else {
            G.noalias() = scale * P[k].middleCols(rows.begin, rows.size()).transpose() * R[k + 1];
            G.noalias() += scale * R[k].middleCols(rows.begin, rows.size()).transpose() * P[k + 1];
          }
        },
        [&](int k, Range cols, auto g) { detail::column_sums(P[k].middleCols(cols.begin, cols.size()), scale, g); });
  });
}

}  // namespace eqcore
