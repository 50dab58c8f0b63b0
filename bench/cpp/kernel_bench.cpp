// Microbenchmarks of the eqcore kernel, float32 (Google Benchmark).
//
//   Relax/<net>/T:<steps>/B:<batch>/threads:<t>    eqcore::relax, free phase, `steps` Euler steps per call
//   Hvp/<net>/<act>/B:<batch>/threads:<t>          eqcore::hvp, one Hessian-vector product per call
//   EpStep/<net>/T:<T>/K:<K>/B:<batch>/threads:<t> eqcore::ep_step, a whole one-sided EP training step
//   InputDrive/<net>/B:<batch>/threads:<t>         eqcore::input_drive (x W_0 + b_1), part of the two above
//   EigenGemm/<M>x<K>x<N>[/At][/Bt]/threads:<t>    a plain Eigen GEMM of one shape the kernel uses
//   EigenGemm/square:1024/threads:<t>              the machine's large-GEMM rate, for scale
//
// Counters (rates are per second of wall-clock time; every benchmark uses real time):
//   GFLOPS            the FLOPs the operation cannot avoid, per second, in units of 1e9. Those are
//                     the matrix products only: per Euler step (and per Hessian-vector product)
//                     2 B n_k n_{k+1} in each direction for each pair of free layers; the input
//                     drive 2 B n_0 n_1 once per call; the EP update 2 B n_0 n_1 + 4 B n_k n_{k+1}
//                     (k >= 1: rho(a)^T rho(a) - rho(b)^T rho(b)). Element-wise work is not counted.
//   gemm_GFLOPS       plain Eigen GEMMs of exactly those shapes, in the same proportions, with the
//                     rows of each product split over the same number of threads (one OpenMP team
//                     running many products back to back: no fork/join per product), timed right
//                     after the operation's own loop in the same run (median of 3 trials, about a
//                     quarter of the loop's time), so both see the same load on a shared machine.
//   fraction_of_gemm  GFLOPS / gemm_GFLOPS: 1 means the operation runs as fast as its products would
//                     alone; the rest is element-wise work, packing of small products, copies,
//                     allocation and synchronisation. Not a bound: the kernel's own GEMM calls may
//                     beat the reference (e.g. its row tiles keep operands in cache), and on a loaded
//                     machine either side may catch a bad moment.
//   time_per_step     Relax and EpStep: wall time per Euler step in seconds (the call's time divided
//                     by its steps; EpStep: free + nudged steps, input drive and update included).
//   items_per_second  EpStep: training examples per second.
// The checks, the reference GEMMs and the set-up are outside the timed loop.
// Set EQCORE_BENCH_REFERENCE=0 to skip the reference GEMMs (e.g. under `perf record`, so their
// samples do not mix with the kernel's).
//
// Each benchmark checks its result once before timing: relax and hvp against a naive dense
// implementation, ep_step for a finite update.
#include <benchmark/benchmark.h>

#include "eqcore/hessian.hpp"
#include "eqcore/relax.hpp"
#include "eqcore/training.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using T = float;
using eqcore::Index;
using Mat = eqcore::Matrix<T>;

// ----------------------------------------------------------------------------- cases

struct Case {
  std::string name;
  std::vector<Index> sizes;
  Index free_steps, nudged_steps;
  std::vector<T> lr;  // per weight matrix (eqcore's cost convention: the 2017 paper's doubled)
};

// The 2017 EP paper's MNIST settings (T free / K nudged steps), plus a wide 3-hidden-layer net.
const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"784-500-10", {784, 500, 10}, 20, 4, {0.2f, 0.1f}},
      {"784-500-500-10", {784, 500, 500, 10}, 100, 6, {0.8f, 0.2f, 0.02f}},
      {"784-1000-1000-1000-10", {784, 1000, 1000, 1000, 10}, 200, 10, {0.256f, 0.064f, 0.016f, 0.004f}},
  };
  return c;
}
const std::vector<Index> kBatches = {20, 64, 128, 256};
const std::vector<int> kThreads = {1, 2};
constexpr T kDt = 0.5f;
constexpr T kBeta = 2.0f;  // the paper's beta = 1 in eqcore's 1/2 |s - y|^2 convention

// ----------------------------------------------------------------------------- FLOP model

// One matrix product C (M x N) = op(A) (M x K) * op(B) (K x N), row-major storage as in the
// kernel: A stored (K x M) when ta (A^T is used), B stored (N x K) when tb (W^T is used).
struct Gemm {
  Index M, K, N;
  bool ta = false, tb = false;
  double flops() const { return 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(N); }
  auto key() const { return std::make_tuple(M, K, N, ta, tb); }
  std::string name() const {
    return std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N) + (ta ? "/At" : "") + (tb ? "/Bt" : "");
  }
};
struct Term {
  Gemm g;
  double count;
};
using Terms = std::vector<Term>;

// The products of one Euler step (or one Hessian-vector product) for B rows:
// rho(s_{k-1}) W_{k-1} into layer k >= 2, and rho(s_{k+1}) W_k^T into layer k < L.
Terms step_terms(const std::vector<Index>& n, Index B, double count) {
  Terms t;
  const int L = static_cast<int>(n.size()) - 1;
  for (int k = 2; k <= L; ++k) t.push_back({{B, n[k - 1], n[k], false, false}, count});
  for (int k = 1; k < L; ++k) t.push_back({{B, n[k + 1], n[k], false, true}, count});
  return t;
}
Terms input_terms(const std::vector<Index>& n, Index B) { return {{{B, n[0], n[1], false, false}, 1.0}}; }
// EP update: W_0 += c x^T (rho(a_1) - rho(b_1)); W_k += c (rho(a_k)^T rho(a_{k+1}) - rho(b_k)^T rho(b_{k+1})).
Terms update_terms(const std::vector<Index>& n, Index B) {
  Terms t{{{n[0], B, n[1], true, false}, 1.0}};
  for (std::size_t k = 1; k + 1 < n.size(); ++k) t.push_back({{n[k], B, n[k + 1], true, false}, 2.0});
  return t;
}
Terms concat(Terms a, const Terms& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
double flops(const Terms& terms) {
  double f = 0;
  for (const auto& t : terms) f += t.count * t.g.flops();
  return f;
}

// ----------------------------------------------------------------------------- data

void fill_uniform(T* p, Index n, std::mt19937& gen, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  for (Index i = 0; i < n; ++i) p[i] = static_cast<T>(u(gen));
}

// A network (Glorot-uniform weights, zero biases, as eqcore.Network), a batch of inputs in
// [0, 1), one-hot targets and a zero state. Not copyable: `net` points into W and b.
struct Model {
  std::vector<Index> sizes;
  std::vector<Mat> W;
  std::vector<eqcore::RowVector<T>> b;
  eqcore::Net<T> net;
  Index B;
  Mat x, y;
  std::vector<Mat> s;
  eqcore::LayerPtrs<T> weight_ptrs, bias_ptrs, state_ptrs;

  Model(const std::vector<Index>& n, Index batch, eqcore::Activation act, unsigned seed = 0) : sizes(n), B(batch) {
    std::mt19937 gen(seed);
    const int L = static_cast<int>(n.size()) - 1;
    W.resize(static_cast<std::size_t>(L));
    b.resize(static_cast<std::size_t>(L));
    for (int k = 0; k < L; ++k) {
      const double bound = std::sqrt(6.0 / static_cast<double>(n[k] + n[k + 1]));
      W[k].resize(n[k], n[k + 1]);
      fill_uniform(W[k].data(), W[k].size(), gen, -bound, bound);
      b[k].setZero(n[k + 1]);
      weight_ptrs.push_back(W[k].data());
      bias_ptrs.push_back(b[k].data());
    }
    net.activation = act;
    net.sizes = n;
    net.weights.assign(weight_ptrs.begin(), weight_ptrs.end());
    net.biases.assign(bias_ptrs.begin(), bias_ptrs.end());
    x.resize(B, n[0]);
    fill_uniform(x.data(), x.size(), gen, 0.0, 1.0);
    // EQCORE_BENCH_INPUT_DENSITY=0.2: keep that share of x non-zero (like MNIST images, which
    // take the kernel's sparse input path); default 1, every input dense.
    if (const char* d = std::getenv("EQCORE_BENCH_INPUT_DENSITY")) {
      std::uniform_real_distribution<double> u(0.0, 1.0);
      const double density = std::atof(d);
      for (Index i = 0; i < x.size(); ++i)
        if (u(gen) >= density) x.data()[i] = T(0);
    }
    y.setZero(B, n[L]);
    for (Index i = 0; i < B; ++i) y(i, static_cast<Index>(gen() % static_cast<unsigned>(n[L]))) = T(1);
    s.resize(static_cast<std::size_t>(L));
    for (int k = 1; k <= L; ++k) {
      s[k - 1].setZero(B, n[k]);
      state_ptrs.push_back(s[k - 1].data());
    }
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  int layers() const { return static_cast<int>(sizes.size()) - 1; }
  const Mat& weight(int k) const { return W[static_cast<std::size_t>(k)]; }
};

eqcore::ConstLayerPtrs<T> const_ptrs(const eqcore::LayerPtrs<T>& p) { return {p.begin(), p.end()}; }

// ----------------------------------------------------------------------------- naive references

Mat hard_sigmoid(const Mat& s) { return s.array().max(T(0)).min(T(1)).matrix(); }
Mat hard_sigmoid_prime(const Mat& s) { return (s.array() >= T(0) && s.array() <= T(1)).cast<T>().matrix(); }

// `steps` synchronous clipped Euler steps of the free dynamics (hard sigmoid), dense Eigen.
std::vector<Mat> naive_relax(const Model& m, std::vector<Mat> s, Index steps) {
  const int L = m.layers();
  for (Index t = 0; t < steps; ++t) {
    std::vector<Mat> R(static_cast<std::size_t>(L + 1));
    for (int k = 1; k <= L; ++k) R[k] = hard_sigmoid(s[k - 1]);
    for (int k = 1; k <= L; ++k) {
      Mat u = (k == 1 ? Mat(m.x * m.weight(0)) : Mat(R[k - 1] * m.weight(k - 1)));
      if (k < L) u += R[k + 1] * m.weight(k).transpose();
      u.rowwise() += m.b[k - 1];
      Mat& sk = s[k - 1];
      Mat next = sk - kDt * (sk - Mat(hard_sigmoid_prime(sk).cwiseProduct(u)));
      sk = hard_sigmoid(next);
    }
  }
  return s;
}

// (H v)_k at state s, dense Eigen, hard sigmoid or logistic sigmoid.
std::vector<Mat> naive_hvp(const Model& m, const std::vector<Mat>& s, const std::vector<Mat>& v) {
  const int L = m.layers();
  const bool sig = m.net.activation == eqcore::Activation::Sigmoid;
  std::vector<Mat> R(static_cast<std::size_t>(L + 1)), D(R.size()), P(R.size()), out;
  for (int k = 1; k <= L; ++k) {
    const Mat& sk = s[k - 1];
    if (sig) {
      R[k] = (T(1) / (T(1) + (-sk.array()).exp())).matrix();
      D[k] = (R[k].array() * (T(1) - R[k].array())).matrix();
    } else {
      R[k] = hard_sigmoid(sk);
      D[k] = hard_sigmoid_prime(sk);
    }
    P[k] = D[k].cwiseProduct(v[k - 1]);
  }
  for (int k = 1; k <= L; ++k) {
    Mat q = Mat::Zero(m.B, m.sizes[k]);
    if (k > 1) q += P[k - 1] * m.weight(k - 1);
    if (k < L) q += P[k + 1] * m.weight(k).transpose();
    Mat o = v[k - 1] - Mat(D[k].cwiseProduct(q));
    if (sig) {
      Mat u = (k == 1 ? Mat(m.x * m.weight(0)) : Mat(R[k - 1] * m.weight(k - 1)));
      if (k < L) u += R[k + 1] * m.weight(k).transpose();
      u.rowwise() += m.b[k - 1];
      const auto r = R[k].array();
      o.array() -= r * (T(1) - r) * (T(1) - T(2) * r) * u.array() * v[k - 1].array();
    }
    out.push_back(o);
  }
  return out;
}

double max_abs_diff(const std::vector<Mat>& a, const std::vector<Mat>& b) {
  double d = 0;
  for (std::size_t k = 0; k < a.size(); ++k) d = std::max(d, static_cast<double>((a[k] - b[k]).cwiseAbs().maxCoeff()));
  return d;
}

// ----------------------------------------------------------------------------- reference GEMMs

// Runs `reps` products of one shape back to back on an OpenMP team of `threads` threads, each
// thread computing its own block of rows of C (as the kernel splits a batch).
class GemmRunner {
 public:
  GemmRunner(const Gemm& g, int threads) : g_(g), nt_(eqcore::threads_for(g.M, threads)) {
    std::mt19937 gen(1);
    A_.resize(g.ta ? g.K : g.M, g.ta ? g.M : g.K);
    B_.resize(g.tb ? g.N : g.K, g.tb ? g.K : g.N);
    fill_uniform(A_.data(), A_.size(), gen, 0.0, 1.0);
    fill_uniform(B_.data(), B_.size(), gen, -0.1, 0.1);
    C_.setZero(g.M, g.N);
  }
  void run(long reps) {
    eqcore::run_team(nt_, [&](int t, int nt) {
      const eqcore::Range r = eqcore::part(g_.M, t, nt);
      auto C = C_.middleRows(r.begin, r.size());
      for (long i = 0; i < reps; ++i) {
        if (g_.ta && g_.tb)
          C.noalias() = A_.middleCols(r.begin, r.size()).transpose() * B_.transpose();
        else if (g_.ta)
          C.noalias() = A_.middleCols(r.begin, r.size()).transpose() * B_;
        else if (g_.tb)
          C.noalias() = A_.middleRows(r.begin, r.size()) * B_.transpose();
        else
          C.noalias() = A_.middleRows(r.begin, r.size()) * B_;
      }
    });
    benchmark::DoNotOptimize(C_.data());
    benchmark::ClobberMemory();
  }
  int threads() const { return nt_; }

 private:
  Gemm g_;
  int nt_;
  Mat A_, B_, C_;
};

bool reference_enabled() {
  const char* e = std::getenv("EQCORE_BENCH_REFERENCE");
  return !(e && std::string(e) == "0");
}

// The runner (operands) for one shape and thread count, built once per process.
GemmRunner& runner_for(const Gemm& g, int threads) {
  static std::map<std::tuple<Index, Index, Index, bool, bool, int>, std::unique_ptr<GemmRunner>> cache;
  auto& r = cache[std::tuple_cat(g.key(), std::make_tuple(threads))];
  if (!r) r = std::make_unique<GemmRunner>(g, threads);
  return *r;
}

// Seconds per product of shape g on `threads` threads: median of 3 trials filling `budget`
// seconds in all (at least one product per trial).
double gemm_seconds(const Gemm& g, int threads, double budget) {
  GemmRunner& runner = runner_for(g, threads);
  using clock = std::chrono::steady_clock;
  auto time = [&](long reps) {
    const auto t0 = clock::now();
    runner.run(reps);
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  long reps = 1;
  double s = time(reps);  // also warms caches and the thread team
  while (s < 1e-3) {
    reps *= 4;
    s = time(reps);
  }
  reps = std::max(1L, static_cast<long>(budget / 3.0 / (s / static_cast<double>(reps))));
  double trials[3];
  for (double& t : trials) t = time(reps) / static_cast<double>(reps);
  std::sort(trials, trials + 3);
  return trials[1];
}

// GFLOPS, gemm_GFLOPS and fraction_of_gemm for an operation whose products are `terms`, timed
// `loop_seconds` in all. The reference GEMMs run right after the timed loop, in the same
// invocation, so that both see the same machine load (this machine is shared); they take about a
// quarter of the loop's time (10 ms to 0.5 s).
void set_flop_counters(benchmark::State& st, const Terms& terms, int threads, double loop_seconds) {
  using benchmark::Counter;
  const double f = flops(terms), iters = static_cast<double>(st.iterations());
  st.counters["GFLOPS"] = Counter(f * iters * 1e-9, Counter::kIsRate);
  if (!reference_enabled() || iters == 0) return;
  const double budget = std::clamp(0.25 * loop_seconds, 10e-3, 0.5) / static_cast<double>(terms.size());
  double seconds = 0;
  for (const auto& t : terms) seconds += t.count * gemm_seconds(t.g, threads, budget);
  const double gemm_rate = f / seconds;
  st.counters["gemm_GFLOPS"] = Counter(gemm_rate * 1e-9);
  st.counters["fraction_of_gemm"] = Counter(f * iters / gemm_rate, Counter::kIsRate);
}

// Wall-clock seconds of a benchmark's timed loop (for the reference budget only).
class LoopClock {
 public:
  LoopClock() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

// ----------------------------------------------------------------------------- benchmarks

void BM_EigenGemm(benchmark::State& st, Gemm g, int threads) {
  GemmRunner runner(g, threads);
  // Enough products per iteration (>= ~2 MFLOP) that one OpenMP fork/join is negligible.
  const long inner = std::max(1L, static_cast<long>(2e6 / g.flops()));
  for (auto _ : st) runner.run(inner);
  st.counters["GFLOPS"] = benchmark::Counter(g.flops() * static_cast<double>(inner * st.iterations()) * 1e-9,
                                             benchmark::Counter::kIsRate);
  st.counters["threads"] = runner.threads();
}

void BM_InputDrive(benchmark::State& st, const Case& c, Index B, int threads) {
  Model m(c.sizes, B, eqcore::Activation::HardSigmoid);
  Mat drive;
  eqcore::input_drive(m.net, m.x.data(), B, drive, threads);
  const Mat expected = (m.x * m.weight(0)).rowwise() + m.b[0];
  if ((drive - expected).cwiseAbs().maxCoeff() > 1e-4f * (1 + expected.cwiseAbs().maxCoeff())) {
    st.SkipWithError("input_drive differs from x W_0 + b_1");
    return;
  }
  const LoopClock loop;
  for (auto _ : st) {
    eqcore::input_drive(m.net, m.x.data(), B, drive, threads);
    benchmark::DoNotOptimize(drive.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(st, input_terms(c.sizes, B), threads, loop.seconds());
}

void BM_Relax(benchmark::State& st, const Case& c, Index B, int threads) {
  Model m(c.sizes, B, eqcore::Activation::HardSigmoid);
  eqcore::RelaxOptions<T> opt;
  opt.steps = c.free_steps;
  opt.dt = kDt;
  opt.clip = true;
  opt.threads = threads;
  {  // check a few steps against the naive relaxation
    const Index check_steps = 3;
    const auto expected = naive_relax(m, m.s, check_steps);
    eqcore::RelaxOptions<T> o = opt;
    o.steps = check_steps;
    const auto r = eqcore::relax(m.net, m.x.data(), B, m.state_ptrs, static_cast<const T*>(nullptr), o, eqcore::LayerPtrs<T>{});
    if (r.status != eqcore::Status::Ok || max_abs_diff(m.s, expected) > 1e-4) {
      st.SkipWithError("relax differs from the naive relaxation");
      return;
    }
  }
  const LoopClock loop;
  for (auto _ : st) {
    const auto r = eqcore::relax(m.net, m.x.data(), B, m.state_ptrs, static_cast<const T*>(nullptr), opt, eqcore::LayerPtrs<T>{});
    if (r.status != eqcore::Status::Ok) {
      st.SkipWithError("relax diverged");
      return;
    }
    benchmark::ClobberMemory();
  }
  const double steps = static_cast<double>(opt.steps);
  set_flop_counters(st, concat(input_terms(c.sizes, B), step_terms(c.sizes, B, steps)), threads, loop.seconds());
  st.counters["time_per_step"] = benchmark::Counter(static_cast<double>(st.iterations()) * steps,
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_Hvp(benchmark::State& st, const Case& c, Index B, int threads, eqcore::Activation act) {
  Model m(c.sizes, B, act);
  std::mt19937 gen(7);
  std::vector<Mat> v, out;
  for (int k = 1; k <= m.layers(); ++k) {
    fill_uniform(m.s[k - 1].data(), m.s[k - 1].size(), gen, 0.02, 0.98);  // inside (0, 1)
    v.emplace_back(B, c.sizes[k]);
    fill_uniform(v.back().data(), v.back().size(), gen, -1.0, 1.0);
    out.emplace_back(B, c.sizes[k]);
  }
  eqcore::ConstLayerPtrs<T> s_ptrs = const_ptrs(m.state_ptrs), v_ptrs;
  eqcore::LayerPtrs<T> out_ptrs;
  for (auto& a : v) v_ptrs.push_back(a.data());
  for (auto& a : out) out_ptrs.push_back(a.data());
  eqcore::hvp(m.net, m.x.data(), B, s_ptrs, v_ptrs, T(0), out_ptrs, threads);
  if (max_abs_diff(out, naive_hvp(m, m.s, v)) > 1e-4) {
    st.SkipWithError("hvp differs from the naive Hessian-vector product");
    return;
  }
  const LoopClock loop;
  for (auto _ : st) {
    eqcore::hvp(m.net, m.x.data(), B, s_ptrs, v_ptrs, T(0), out_ptrs, threads);
    benchmark::ClobberMemory();
  }
  Terms terms = step_terms(c.sizes, B, 1.0);
  // The logistic sigmoid's curvature term rho''(s) u needs the drive u: x W_0 and one more
  // set of step products (hvp recomputes it every call).
  if (act == eqcore::Activation::Sigmoid) terms = concat(concat(terms, input_terms(c.sizes, B)), step_terms(c.sizes, B, 1.0));
  set_flop_counters(st, terms, threads, loop.seconds());
}

void BM_EpStep(benchmark::State& st, const Case& c, Index B, int threads) {
  Model m(c.sizes, B, eqcore::Activation::HardSigmoid);
  eqcore::EpStepOptions<T> opt;
  opt.free_steps = c.free_steps;
  opt.nudged_steps = c.nudged_steps;
  opt.dt = kDt;
  opt.beta = kBeta;
  opt.clip = true;
  opt.learning_rates = c.lr;
  opt.threads = threads;
  const LoopClock loop;
  for (auto _ : st) {
    const auto r = eqcore::ep_step(m.net, m.weight_ptrs, m.bias_ptrs, m.x.data(), B, m.state_ptrs, m.y.data(), opt);
    if (r.status != eqcore::Status::Ok) {
      st.SkipWithError("ep_step diverged");
      return;
    }
    benchmark::ClobberMemory();
  }
  for (const auto& w : m.W)
    if (!w.allFinite()) {
      st.SkipWithError("ep_step left non-finite weights");
      return;
    }
  const double steps = static_cast<double>(opt.free_steps + opt.nudged_steps);
  set_flop_counters(
      st, concat(concat(input_terms(c.sizes, B), step_terms(c.sizes, B, steps)), update_terms(c.sizes, B)), threads,
      loop.seconds());
  st.counters["time_per_step"] = benchmark::Counter(static_cast<double>(st.iterations()) * steps,
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  st.SetItemsProcessed(st.iterations() * B);  // examples per second
}

// ----------------------------------------------------------------------------- registration

std::string suffix(Index B, int threads) { return "/B:" + std::to_string(B) + "/threads:" + std::to_string(threads); }

void register_all() {
  std::map<std::tuple<Index, Index, Index, bool, bool>, Gemm> shapes;  // input-drive and step products
  for (const Case& c : cases()) {
    for (Index B : kBatches) {
      for (const Terms& ts : {input_terms(c.sizes, B), step_terms(c.sizes, B, 1)})
        for (const Term& t : ts) shapes.emplace(t.g.key(), t.g);
      for (int th : kThreads) {
        const std::string steps = "/T:" + std::to_string(c.free_steps);
        benchmark::RegisterBenchmark(("Relax/" + c.name + steps + suffix(B, th)).c_str(),
                                     [&c, B, th](benchmark::State& st) { BM_Relax(st, c, B, th); })
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
        for (auto act : {eqcore::Activation::HardSigmoid, eqcore::Activation::Sigmoid}) {
          const std::string a = act == eqcore::Activation::Sigmoid ? "/sigmoid" : "/hardsigmoid";
          benchmark::RegisterBenchmark(("Hvp/" + c.name + a + suffix(B, th)).c_str(),
                                       [&c, B, th, act](benchmark::State& st) { BM_Hvp(st, c, B, th, act); })
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
        benchmark::RegisterBenchmark(
            ("EpStep/" + c.name + steps + "/K:" + std::to_string(c.nudged_steps) + suffix(B, th)).c_str(),
            [&c, B, th](benchmark::State& st) { BM_EpStep(st, c, B, th); })
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(("InputDrive/" + c.name + suffix(B, th)).c_str(),
                                     [&c, B, th](benchmark::State& st) { BM_InputDrive(st, c, B, th); })
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  for (const auto& kv : shapes)
    for (int th : kThreads)
      benchmark::RegisterBenchmark(("EigenGemm/" + kv.second.name() + "/threads:" + std::to_string(th)).c_str(),
                                   [g = kv.second, th](benchmark::State& st) { BM_EigenGemm(st, g, th); })
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond)
          ->MinTime(0.2);
  for (int th : kThreads)
    benchmark::RegisterBenchmark(("EigenGemm/square:1024/threads:" + std::to_string(th)).c_str(),
                                 [th](benchmark::State& st) { BM_EigenGemm(st, Gemm{1024, 1024, 1024}, th); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("eqcore_tile_rows", std::to_string(eqcore::kTileRows));
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  benchmark::AddCustomContext("GOMP_SPINCOUNT", spin ? spin : "(unset)");
  benchmark::AddCustomContext("reference_gemm", reference_enabled() ? "on" : "off");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
