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
  template <class T>
  static T drho(T s, T /*r*/) {
    return (s >= T(0) && s <= T(1)) ? T(1) : T(0);
  }
  template <class T>
  static T d2rho(T /*s*/, T /*r*/) {
    return T(0);
  }
};

// Logistic sigmoid 1 / (1 + exp(-s)): smooth, used where second derivatives matter.
struct Sigmoid {
  static constexpr bool has_second_derivative = true;

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
