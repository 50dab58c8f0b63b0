// Activations rho and their derivatives.
//
// Derivatives are written in terms of the pre-activation s and of r = rho(s), which the
// kernels already hold: for the logistic sigmoid rho' = r (1 - r) costs no extra exp.
// rho returns an unevaluated Eigen expression: use it inside one statement only.
#pragma once

#include "eqcore/types.hpp"

#include <algorithm>
#include <cmath>

namespace eqcore {

// Each activation gives rho as an Eigen array expression (vectorised, incl. Eigen's logistic),
// and rho', rho'' as scalar functions of (s, r = rho(s)) used inside `omp simd` loops: Eigen
// 3.4 does not vectorise comparisons, which the hard sigmoid's rho' needs.

// Hard sigmoid clip(s, 0, 1) (Scellier & Bengio 2017). rho' = 1 on the closed interval
// [0, 1] and 0 outside (what autograd of a clamp gives); rho'' = 0.
struct HardSigmoid {
  static constexpr bool has_second_derivative = false;

  template <class A>
  static auto rho(const Eigen::ArrayBase<A>& s) {
    using T = typename A::Scalar;
    return s.cwiseMax(T(0)).cwiseMin(T(1));
  }
  // One comparison (s in [0, 1] exactly when clip(s) == s) vectorises to a single masked
  // select, where `s >= 0 && s <= 1` made GCC shuffle masks through integer registers.
  template <class T>
  static T drho(T s, T r) {
    return r == s ? T(1) : T(0);
  }
  // rho and rho' u on packets, for the relaxation's fused element loop (which updates rho(s)
  // in the same pass). rho' is 0 or 1, multiplied (not a mask of u: 0 * NaN must stay NaN, so a
  // non-finite parameter still shows in the result and gets named).
  static constexpr bool fused_rho = true;
  template <class P>
  static P prho(const P& s) {
    using namespace Eigen::internal;
    return pmin(pmax(s, pzero(s)), pset1<P>(1));
  }
  template <class P>
  static P pdrho_times(const P& s, const P& r, const P& u) {
    using namespace Eigen::internal;
    return pmul(pand(pcmp_eq(r, s), pset1<P>(1)), u);
  }
  template <class T>
  static T d2rho(T /*s*/, T /*r*/) {
    return T(0);
  }
};

// Logistic sigmoid 1 / (1 + exp(-s)): smooth, used where second derivatives matter.
struct Sigmoid {
  static constexpr bool has_second_derivative = true;
  static constexpr bool fused_rho = false;  // rho(s) after the loop, by Eigen's vectorised logistic
  template <class P>
  static P prho(const P& s) {
    return s;  // unused (fused_rho is false)
  }
  template <class P>
  static P pdrho_times(const P& /*s*/, const P& r, const P& u) {
    using namespace Eigen::internal;
    return pmul(pmul(r, psub(pset1<P>(1), r)), u);
  }

  template <class A>
  static auto rho(const Eigen::ArrayBase<A>& s) {
    return s.logistic();
  }
  template <class T>
  static T drho(T /*s*/, T r) {
    return r * (T(1) - r);
  }
  template <class T>
  static T d2rho(T /*s*/, T r) {
    return r * (T(1) - r) * (T(1) - T(2) * r);
  }
};

// d[i] = rho'(s[i]) for n contiguous entries, given r = rho(s).
template <class Act, class T>
void first_derivative(const T* s, const T* r, T* d, Index n) {
#pragma omp simd
  for (Index i = 0; i < n; ++i) d[i] = Act::drho(s[i], r[i]);
}

// d[i] = rho''(s[i]) for n contiguous entries, given r = rho(s).
template <class Act, class T>
void second_derivative(const T* s, const T* r, T* d, Index n) {
#pragma omp simd
  for (Index i = 0; i < n; ++i) d[i] = Act::d2rho(s[i], r[i]);
}

// Calls f(Act{}) with the activation type matching `a`, so kernels are compiled once per
// activation and the element-wise passes inline.
template <class F>
decltype(auto) with_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::Sigmoid:
      return f(Sigmoid{});
    case Activation::HardSigmoid:
    default:
      return f(HardSigmoid{});
  }
}

}  // namespace eqcore
