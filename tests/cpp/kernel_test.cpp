// Standalone checks of the kernel (no Python): dE/ds against central differences of E, and a
// relaxation with a tolerance that converges to a point where dE/ds vanishes.
#include "eqcore/algorithms.hpp"
#include "eqcore/network.hpp"
#include "eqcore/relax.hpp"
#include "eqcore/training.hpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}

template <class T>
struct Fixture {
  std::vector<eqcore::Index> sizes{5, 4, 3, 2};
  std::vector<eqcore::Matrix<T>> W;
  std::vector<eqcore::RowVector<T>> b;
  eqcore::Net<T> net;
  eqcore::Index B = 3;
  eqcore::Matrix<T> x;
  std::vector<eqcore::Matrix<T>> s;

  explicit Fixture(eqcore::Activation act) {
    std::mt19937 gen(42);
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    auto fill = [&](auto& m) {
      for (eqcore::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(u(gen));
    };
    net.activation = act;
    net.sizes = sizes;
    for (std::size_t k = 0; k + 1 < sizes.size(); ++k) {
      W.emplace_back(sizes[k], sizes[k + 1]);
      b.emplace_back(sizes[k + 1]);
      fill(W.back());
      fill(b.back());
    }
    for (std::size_t k = 0; k + 1 < sizes.size(); ++k) {
      net.weights.push_back(W[k].data());
      net.biases.push_back(b[k].data());
    }
    x.resize(B, sizes[0]);
    fill(x);
    x.array() += T(0.5);
    for (std::size_t k = 1; k < sizes.size(); ++k) {
      s.emplace_back(B, sizes[k]);
      fill(s.back());
      s.back().array() += T(0.5);  // inside (0, 1), away from the hard sigmoid's kinks
    }
  }
  eqcore::ConstLayerPtrs<T> cstate() const {
    eqcore::ConstLayerPtrs<T> p;
    for (auto& m : s) p.push_back(m.data());
    return p;
  }
  eqcore::LayerPtrs<T> state() {
    eqcore::LayerPtrs<T> p;
    for (auto& m : s) p.push_back(m.data());
    return p;
  }
  T total_energy() const {
    eqcore::Matrix<T> e(B, 1);
    eqcore::energy(net, x.data(), B, cstate(), e.data(), 2);
    return e.sum();
  }
};

template <class T>
void check_gradient(eqcore::Activation act) {
  Fixture<T> f(act);
  std::vector<eqcore::Matrix<T>> g;
  eqcore::LayerPtrs<T> gp;
  for (auto& m : f.s) {
    g.emplace_back(m.rows(), m.cols());
    gp.push_back(g.back().data());
  }
  eqcore::energy_grad_state(f.net, f.x.data(), f.B, f.cstate(), static_cast<const T*>(nullptr), T(0), gp, 2);
  const T h = T(1e-5);
  double worst = 0;
  for (std::size_t k = 0; k < f.s.size(); ++k)
    for (eqcore::Index i = 0; i < f.s[k].size(); ++i) {
      T& v = f.s[k].data()[i];
      const T old = v;
      v = old + h;
      const T plus = f.total_energy();
      v = old - h;
      const T minus = f.total_energy();
      v = old;
      worst = std::max(worst, std::abs(double((plus - minus) / (2 * h) - g[k].data()[i])));
    }
  expect(worst < 1e-8, "dE/ds matches central differences");
}

template <class T>
void check_relaxation(eqcore::Activation act) {
  Fixture<T> f(act);
  eqcore::RelaxOptions<T> opt;
  opt.steps = 10000;
  opt.dt = T(0.5);
  opt.tol = T(1e-5);
  opt.clip = act == eqcore::Activation::HardSigmoid;
  opt.threads = 2;
  const auto res = eqcore::relax(f.net, f.x.data(), f.B, f.state(), static_cast<const T*>(nullptr), opt, {});
  expect(res.status == eqcore::Status::Ok, "relaxation status ok");
  expect(res.steps > 0 && res.steps < opt.steps, "relaxation stops on tol");
}

// Every algorithm compiles warning-free for this scalar type and returns finite numbers.
template <class T>
void check_algorithms(eqcore::Activation act) {
  Fixture<T> f(act);
  const eqcore::Index L = static_cast<eqcore::Index>(f.s.size());
  eqcore::Matrix<T> y = eqcore::Matrix<T>::Constant(f.B, f.sizes.back(), T(0.5));
  std::vector<eqcore::Matrix<T>> a, b, gW, gb;
  eqcore::LayerPtrs<T> pa, pb, pW, pbias;
  for (auto& m : f.s) {
    a.emplace_back(m.rows(), m.cols());
    b.emplace_back(m.rows(), m.cols());
  }
  for (eqcore::Index k = 0; k < L; ++k) {
    gW.emplace_back(f.sizes[k], f.sizes[k + 1]);
    gb.emplace_back(1, f.sizes[k + 1]);
  }
  for (auto& m : a) pa.push_back(m.data());
  for (auto& m : b) pb.push_back(m.data());
  for (auto& m : gW) pW.push_back(m.data());
  for (auto& m : gb) pbias.push_back(m.data());
  eqcore::rbp(f.net, f.x.data(), f.B, f.cstate(), y.data(), 10, T(0.5), T(0), pa, pb, {}, 2);
  eqcore::ConstLayerPtrs<T> rhs(pa.begin(), pa.end());
  const auto solved = eqcore::solve_hessian(f.net, f.x.data(), f.B, f.cstate(), rhs, T(0), T(1e-5), 100, pb, 2);
  expect(solved.positive_definite, "H is positive definite at a point inside (0, 1) with small weights");
  const auto bp = eqcore::bptt(f.net, f.x.data(), f.B, f.cstate(), y.data(), 5, T(0.5), true, pW, pbias, 2);
  expect(bp.status == eqcore::Status::Ok && gW[0].allFinite(), "bptt gives a finite gradient");
  eqcore::EpStepOptions<T> opt;
  opt.learning_rates.assign(static_cast<std::size_t>(L), T(0.1));
  opt.threads = 2;
  eqcore::LayerPtrs<T> weights, biases;
  for (auto& m : f.W) weights.push_back(m.data());
  for (auto& m : f.b) biases.push_back(m.data());
  const auto ep = eqcore::ep_step(f.net, weights, biases, f.x.data(), f.B, f.state(), y.data(), opt);
  expect(ep.status == eqcore::Status::Ok && f.W[0].allFinite(), "an EP step keeps the weights finite");
}

// The sparse input path (x's non-zeros listed by row and by column, register-blocked row
// combinations, the columns past the last whole packet) equals the dense products, on the
// instruction set this test is built for (the extension is built for the native one).
template <class T>
void check_sparse_input(int threads, eqcore::Index n1) {
  const eqcore::Index B = 9, n0 = 37;
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  eqcore::Matrix<T> W0(n0, n1), W1(n1, 3), x = eqcore::Matrix<T>::Zero(B, n0), d(B, n1);
  eqcore::RowVector<T> b1(n1), b2(3);
  for (auto* m : {&W0, &W1, &d})
    for (eqcore::Index i = 0; i < m->size(); ++i) m->data()[i] = static_cast<T>(u(gen));
  for (eqcore::Index j = 0; j < n1; ++j) b1[j] = static_cast<T>(u(gen));
  for (eqcore::Index i = 0; i < B; ++i)
    for (eqcore::Index j = 0; j < n0; ++j)
      if (i == B - 1 || u(gen) < -0.3) x(i, j) = static_cast<T>(u(gen) + 1);  // ~20 %, and a full last row
  eqcore::Net<T> net;
  net.sizes = {n0, n1, 3};
  net.weights = {W0.data(), W1.data()};
  net.biases = {b1.data(), b2.data()};
  eqcore::Matrix<T> D;
  const T tol = std::is_same_v<T, float> ? T(1e-5) : T(1e-12);
  expect(eqcore::input_drive(net, x.data(), B, D, threads), "a 20 % dense x takes the sparse path");
  const eqcore::Matrix<T> dense = (x * W0).rowwise() + b1;
  expect((D - dense).cwiseAbs().maxCoeff() < tol, "the sparse input drive equals x W_0 + b_1");
  eqcore::SparseRows<T> rows, columns;
  expect(eqcore::compress_rows(x.data(), B, n0, rows), "compress_rows lists a 20 % dense x");
  eqcore::transpose(rows, n0, columns);
  const T c = T(0.3);
  const eqcore::Index half = std::min<eqcore::Index>(n1, 16);  // a cut at a whole packet
  for (eqcore::Range cols : {eqcore::Range{0, n1}, eqcore::Range{0, half}, eqcore::Range{half, n1}}) {
    eqcore::Matrix<T> W = W0;
    eqcore::sparse_input_update(columns, d.data(), n1, c, cols, W.data());
    eqcore::Matrix<T> expected = W0;
    expected.middleCols(cols.begin, cols.size()) += c * x.transpose() * d.middleCols(cols.begin, cols.size());
    expect((W - expected).cwiseAbs().maxCoeff() < tol, "the sparse W_0 update equals W_0 + c x^T d on its columns");
  }
  x.setConstant(T(1));
  expect(!eqcore::compress_rows(x.data(), B, n0, rows), "a dense x is refused by compress_rows");
  expect(!eqcore::input_drive(net, x.data(), B, D, threads), "a dense x takes the GEMM");
  expect((D - ((x * W0).rowwise() + b1)).cwiseAbs().maxCoeff() < tol * 10, "the GEMM input drive equals x W_0 + b_1");
}

}  // namespace

int main() {
  for (int threads : {1, 2, 3})
    for (eqcore::Index hidden : {30, 5}) {  // 5: fewer units than a packet, a thread with no columns
      check_sparse_input<float>(threads, hidden);
      check_sparse_input<double>(threads, hidden);
    }
  for (auto act : {eqcore::Activation::HardSigmoid, eqcore::Activation::Sigmoid}) {
    check_gradient<double>(act);
    check_relaxation<double>(act);
    check_relaxation<float>(act);
    check_algorithms<double>(act);
    check_algorithms<float>(act);
  }
  std::printf("kernel_test: %d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
