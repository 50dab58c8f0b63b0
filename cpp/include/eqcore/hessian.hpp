// The Hessian H = d2E/ds2 of one block of examples, applied as a linear operator without
// forming it. H is block-diagonal over examples, so each thread owns the rows it applies.
#pragma once

#include "eqcore/network.hpp"

namespace eqcore {

// H at a state s, for `rows` examples. All buffers are allocated by the constructor; set_state
// and apply allocate nothing, so both may run inside time loops.
template <class Act, class T>
class LocalHessian {
 public:
  LocalHessian(const Net<T>& net, Index rows) : net_(net), rows_(rows) {
    detail::resize_layers(net, rows, R_);
    detail::resize_layers(net, rows, D_);
    detail::resize_layers(net, rows, P_);
    if (Act::has_second_derivative) detail::resize_layers(net, rows, C_);
    Q_.resize(rows, net.max_size());
  }

  // Evaluates rho, rho' (and rho'' u) at the rows r of the state s; X: the same rows of x.
  void set_state(const ConstMatrixMap<T>& X, const ConstLayerPtrs<T>& s, Range r) {
    detail::eval_layers<Act>(net_, s, r, 0, R_, &D_, Act::has_second_derivative ? &C_ : nullptr);
    if constexpr (Act::has_second_derivative) {
      for (int k = 1; k <= net_.layers(); ++k) {
        auto U = Q_.leftCols(net_.size(k));
        detail::drive(net_, k, X, R_, U);
        C_[k].array() *= U.array();  // C_k = rho''(s_k) * u_k: the diagonal curvature term
      }
    }
  }

  // out_k = (H v)_k (+ beta v_L for the nudged energy). out must not alias v.
  void apply(const std::vector<Matrix<T>>& v, std::vector<Matrix<T>>& out, T beta = T(0)) {
    const int L = net_.layers();
    for (int k = 1; k <= L; ++k) P_[k].array() = D_[k].array() * v[k].array();
    for (int k = 1; k <= L; ++k) {
      auto Q = Q_.leftCols(net_.size(k));
      // Q = P_{k-1} W_{k-1} + P_{k+1} W_k^T, with P_0 = 0 (the input is clamped).
      if (k > 1)
        Q.noalias() = P_[k - 1] * net_.weight(k - 1);
      else
        Q.setZero();
      if (k < L) Q.noalias() += P_[k + 1] * net_.weight(k).transpose();
      if constexpr (Act::has_second_derivative)
        out[k].array() = v[k].array() - C_[k].array() * v[k].array() - D_[k].array() * Q.array();
      else
        out[k].array() = v[k].array() - D_[k].array() * Q.array();
      if (k == L && beta != T(0)) out[k] += beta * v[k];
    }
  }

  // rho(s_k) and rho'(s_k) at the current state (k = 1..L).
  const Matrix<T>& rho(int k) const { return R_[static_cast<std::size_t>(k)]; }
  const Matrix<T>& drho(int k) const { return D_[static_cast<std::size_t>(k)]; }
  Index rows() const { return rows_; }

 private:
  const Net<T>& net_;
  Index rows_;
  std::vector<Matrix<T>> R_, D_, C_, P_;
  Matrix<T> Q_;
};

// Copies between row blocks of caller arrays (layer k: (B, n_k)) and per-thread buffers.
namespace detail {
template <class T>
void load_rows(const Net<T>& net, const ConstLayerPtrs<T>& src, Range r, std::vector<Matrix<T>>& dst) {
  for (int k = 1; k <= net.layers(); ++k) dst[k] = rows_of(src[k - 1], net.size(k), r);
}
template <class T>
void store_rows(const Net<T>& net, const std::vector<Matrix<T>>& src, Range r, const LayerPtrs<T>& dst) {
  for (int k = 1; k <= net.layers(); ++k) rows_of(dst[k - 1], net.size(k), r) = src[k];
}
}  // namespace detail

// Hessian-vector product (d2E^beta/ds2) v per example. v and out: layers like the state.
template <class T>
void hvp(const Net<T>& net, const T* x, Index B, const ConstLayerPtrs<T>& s, const ConstLayerPtrs<T>& v, T beta,
         const LayerPtrs<T>& out, int threads) {
  with_activation(net.activation, [&](auto act) {
    using Act = decltype(act);
    parallel_for(B, threads, [&](Range r) {
      LocalHessian<Act, T> h(net, r.size());
      h.set_state(detail::rows_of(x, net.size(0), r), s, r);
      std::vector<Matrix<T>> in, result;
      detail::resize_layers(net, r.size(), in);
      detail::resize_layers(net, r.size(), result);
      detail::load_rows(net, v, r, in);
      h.apply(in, result, beta);
      detail::store_rows(net, result, r, out);
    });
  });
}

}  // namespace eqcore
