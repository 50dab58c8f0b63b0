// pybind11 bindings for the eqcore kernel: argument checks, conversions, GIL release and
// exceptions live here and only here. Every function takes the network as
// (sizes, activation, weights, biases), checks each array against it, and dispatches on the
// dtype of the weights (float32 or float64); every other array must have that exact dtype
// and be C-contiguous (the Python layer converts user inputs; weights are never converted).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "eqcore/algorithms.hpp"
#include "eqcore/hessian.hpp"
#include "eqcore/network.hpp"
#include "eqcore/relax.hpp"
#include "eqcore/training.hpp"

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;
using eqcore::Index;

namespace {

struct DivergenceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotPositiveDefiniteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string shape_string(const std::vector<Index>& shape) {
  std::ostringstream out;
  out << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out << ", ";
    if (shape[i] < 0)
      out << "B";
    else
      out << shape[i];
  }
  if (shape.size() == 1) out << ",";
  out << ")";
  return out.str();
}

std::string shape_string(const py::array& a) {
  std::vector<Index> shape(a.shape(), a.shape() + a.ndim());
  return shape_string(shape);
}

template <class T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

// The array `obj` named `name`, checked to be a C-contiguous numpy array of dtype T and of
// the given shape (-1 matches any extent); writable arrays are required where the kernel
// writes or where the caller owns parameters that training updates in place.
template <class T>
py::array checked_array(py::handle obj, const std::string& name, const std::vector<Index>& shape,
                        bool writable = false) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + ": expected a numpy array, got " + std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(name + ": expected dtype " + dtype_name<T>() + ", got " + std::string(py::str(a.dtype())));
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || a.shape(i) == shape[i];
  if (!same) throw py::value_error(name + ": expected shape " + shape_string(shape) + ", got " + shape_string(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + ": expected a C-contiguous (row-major) array, got a non-contiguous one");
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0)
    throw py::value_error(name + ": expected an array aligned to its dtype, got an unaligned one (e.g. a view at an odd "
                                 "byte offset): pass a copy");
  if (writable && !a.writeable()) throw py::value_error(name + ": expected a writable array, got a read-only one");
  return a;
}

template <class T>
void require_finite(const py::array& a, const std::string& name) {
  const auto* p = static_cast<const T*>(a.data());
  if (!eqcore::all_finite(Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(p, a.size())))
    throw py::value_error(name + ": contains NaN or inf");
}

eqcore::Activation parse_activation(const std::string& name) {
  if (name == "hardsigmoid") return eqcore::Activation::HardSigmoid;
  if (name == "sigmoid") return eqcore::Activation::Sigmoid;
  throw py::value_error("activation: expected 'hardsigmoid' or 'sigmoid', got '" + name + "'");
}

// A checked view of the network's parameters. Holds the arrays so their memory stays alive
// while the kernel runs without the GIL.
template <class T>
struct Model {
  eqcore::Net<T> net;
  eqcore::LayerPtrs<T> mutable_weights, mutable_biases;  // the same parameters, writable (checked)
  std::vector<py::array> keep;

  Model(const std::vector<Index>& sizes, const std::string& activation, const py::sequence& weights,
        const py::sequence& biases) {
    if (sizes.size() < 2) throw py::value_error("sizes: expected at least 2 layer sizes (input and output)");
    for (Index n : sizes)
      if (n < 1) throw py::value_error("sizes: every layer size must be >= 1");
    const std::size_t L = sizes.size() - 1;
    net.activation = parse_activation(activation);
    net.sizes = sizes;
    if (py::len(weights) != L)
      throw py::value_error("weights: expected " + std::to_string(L) + " arrays, got " + std::to_string(py::len(weights)));
    if (py::len(biases) != L)
      throw py::value_error("biases: expected " + std::to_string(L) + " arrays, got " + std::to_string(py::len(biases)));
    for (std::size_t k = 0; k < L; ++k) {
      auto w = checked_array<T>(weights[k], "weights[" + std::to_string(k) + "]", {sizes[k], sizes[k + 1]}, true);
      auto b = checked_array<T>(biases[k], "biases[" + std::to_string(k) + "]", {sizes[k + 1]}, true);
      net.weights.push_back(static_cast<const T*>(w.data()));
      net.biases.push_back(static_cast<const T*>(b.data()));
      mutable_weights.push_back(static_cast<T*>(w.mutable_data()));
      mutable_biases.push_back(static_cast<T*>(b.mutable_data()));
      keep.push_back(w);
      keep.push_back(b);
    }
  }

  int layers() const { return net.layers(); }
  Index size(int k) const { return net.size(k); }

  // Parameters are not checked on every call (a pass over all weights); a non-finite result or a
  // divergence is, and when a parameter is the cause the error names it.
  void require_finite_parameters() const {
    for (int k = 0; k < layers(); ++k) {
      require_finite<T>(keep[static_cast<std::size_t>(2 * k)], "weights[" + std::to_string(k) + "]");
      require_finite<T>(keep[static_cast<std::size_t>(2 * k + 1)], "biases[" + std::to_string(k) + "]");
    }
  }
  // A non-finite result from finite inputs: a non-finite parameter (named), else an overflow.
  [[noreturn]] void non_finite_result(const std::string& what) const {
    require_finite_parameters();
    throw std::overflow_error(what + ": the result overflowed " + dtype_name<T>() +
                              " (inputs, state or parameters too large for this dtype); scale them down or use float64");
  }
  void require_finite_param_shaped(const eqcore::LayerPtrs<T>& gW, const eqcore::LayerPtrs<T>& gb,
                                   const std::string& what) const {
    for (int k = 0; k < layers(); ++k)
      if (!eqcore::all_finite(eqcore::ConstMatrixMap<T>(gW[static_cast<std::size_t>(k)], size(k), size(k + 1))) ||
          !eqcore::all_finite(eqcore::ConstMatrixMap<T>(gb[static_cast<std::size_t>(k)], 1, size(k + 1))))
        non_finite_result(what);
  }
  template <class Ptrs>
  void require_finite_results(const Ptrs& layers_out, Index B, const std::string& what) const {
    for (int k = 1; k <= layers(); ++k)
      if (!eqcore::all_finite(eqcore::ConstMatrixMap<T>(layers_out[static_cast<std::size_t>(k - 1)], B, size(k))))
        non_finite_result(what);
  }

  // x: (B, n_0), finite; returns B.
  Index batch(const py::array& x) const { return x.shape(0); }

  py::array input(py::handle obj) {
    auto x = checked_array<T>(obj, "x", {-1, size(0)});
    if (x.shape(0) == 0) throw py::value_error("x: expected at least one example, got an empty batch");
    require_finite<T>(x, "x");
    keep.push_back(x);
    return x;
  }

  // A list of per-layer arrays (B, n_k), k = 1..L, that the kernel updates in place.
  eqcore::LayerPtrs<T> writable_layers_of(py::handle obj, const std::string& name, Index B) {
    eqcore::LayerPtrs<T> out;
    for (const T* p : layers_of(obj, name, B, true)) out.push_back(const_cast<T*>(p));  // checked writable
    return out;
  }

  Index last_batch = 0;  // B of the last layers_of call (B < 0 there: taken from its first array)

  // A list of per-layer arrays (B, n_k), k = 1..L; B < 0: any batch size, the same for all.
  eqcore::ConstLayerPtrs<T> layers_of(py::handle obj, const std::string& name, Index B, bool writable = false) {
    if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::array>(obj))
      throw py::type_error(name + ": expected a list of " + std::to_string(layers()) + " arrays (one per layer 1..L)");
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    if (py::len(seq) != static_cast<std::size_t>(layers()))
      throw py::value_error(name + ": expected " + std::to_string(layers()) + " arrays (one per layer 1..L), got " +
                            std::to_string(py::len(seq)));
    eqcore::ConstLayerPtrs<T> out;
    for (int k = 1; k <= layers(); ++k) {
      auto a = checked_array<T>(seq[static_cast<std::size_t>(k - 1)], name + "[" + std::to_string(k - 1) + "]", {B, size(k)},
                                writable);
      require_finite<T>(a, name + "[" + std::to_string(k - 1) + "]");
      if (B < 0) B = a.shape(0);
      out.push_back(static_cast<const T*>(a.data()));
      keep.push_back(a);
    }
    last_batch = B;
    return out;
  }

  const T* target(py::handle obj, Index B) {
    auto y = checked_array<T>(obj, "target", {B, size(layers())});
    require_finite<T>(y, "target");
    keep.push_back(y);
    return static_cast<const T*>(y.data());
  }

  // Fresh outputs shaped like the state / like the parameters.
  py::list new_layers(Index B, eqcore::LayerPtrs<T>& ptrs) const {
    py::list out;
    for (int k = 1; k <= layers(); ++k) {
      py::array_t<T> a({B, size(k)});
      ptrs.push_back(a.mutable_data());
      out.append(a);
    }
    return out;
  }
  py::tuple new_params(eqcore::LayerPtrs<T>& gW, eqcore::LayerPtrs<T>& gb) const {
    py::list w, b;
    for (int k = 0; k < layers(); ++k) {
      py::array_t<T> a({size(k), size(k + 1)});
      gW.push_back(a.mutable_data());
      w.append(a);
      py::array_t<T> c(size(k + 1));
      gb.push_back(c.mutable_data());
      b.append(c);
    }
    return py::make_tuple(w, b);
  }
};

int check_threads(int threads) {
  if (threads < 1) throw py::value_error("threads: expected an integer >= 1, got " + std::to_string(threads));
  return threads;  // the kernel uses at most as many threads as there are processors
}

Index check_steps(Index steps) {
  if (steps < 0) throw py::value_error("steps: expected an integer >= 0, got " + std::to_string(steps));
  return steps;
}

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// A double argument as the kernel's T. A finite value that T cannot hold (float32 ends at
// ~3.4e38) or a non-zero one that T rounds to 0 would silently change the computation: both
// are refused, naming the argument.
template <class T>
T narrow(double v, const std::string& name, bool keep_nonzero) {
  const T t = static_cast<T>(v);
  if (std::isfinite(v) && !std::isfinite(t))
    throw py::value_error(name + ": " + number(v) + " is outside the range of " + dtype_name<T>() +
                          " (the network's dtype)");
  if (keep_nonzero && v != 0 && t == 0)
    throw py::value_error(name + ": " + number(v) + " rounds to 0 in " + dtype_name<T>() + " (the network's dtype)");
  return t;
}

template <class T>
T check_dt(double dt) {
  if (!(dt > 0) || !std::isfinite(dt)) throw py::value_error("dt: expected a finite number > 0, got " + number(dt));
  return narrow<T>(dt, "dt", true);
}

double check_tol(double tol) {
  if (!(tol >= 0) || !std::isfinite(tol)) throw py::value_error("tol: expected a finite number >= 0, got " + number(tol));
  return tol;
}

template <class T>
T check_beta(double beta) {
  if (!std::isfinite(beta)) throw py::value_error("beta: expected a finite number, got " + number(beta));
  return narrow<T>(beta, "beta", true);
}

void throw_divergence(const eqcore::RelaxResult& res, Index steps, double dt, double beta) {
  std::ostringstream msg;
  msg << "relaxation diverged: the state became non-finite by step " << res.failed_step << " of " << steps
      << " (dt=" << dt << ", beta=" << beta << "); try a smaller dt";
  throw DivergenceError(msg.str());
}

// A list of `count` fresh arrays (steps + 1, B, n_k) for a recorded trajectory.
template <class T, class M>
py::list new_trajectory(const M& m, Index steps, Index B, eqcore::LayerPtrs<T>& ptrs) {
  // Checked in floating point first: (steps + 1) * B * n must not overflow an index.
  const double values = (static_cast<double>(steps) + 1.0) * static_cast<double>(B) *
                        static_cast<double>(m.net.state_size());
  if (values * sizeof(T) > 0x1p62)
    throw py::value_error("steps: a recorded trajectory of " + std::to_string(steps) + " + 1 steps x " +
                          std::to_string(B) + " examples x " + std::to_string(m.net.state_size()) +
                          " units is too large; record fewer steps");
  py::list out;
  for (int k = 1; k <= m.layers(); ++k) {
    py::array_t<T> a({steps + 1, B, m.size(k)});
    ptrs.push_back(a.mutable_data());
    out.append(a);
  }
  return out;
}

// The first `count` entries of each recorded trajectory array.
py::list cut_trajectory(const py::list& full, Index count) {
  py::list out;
  for (auto item : full) out.append(item.attr("__getitem__")(py::slice(0, count, 1)));
  return out;
}

// Calls f(T{}) with T the dtype of the first weight (float or double).
template <class F>
py::object dispatch(const py::sequence& weights, F&& f) {
  if (py::len(weights) == 0) throw py::value_error("weights: expected at least one array, got none");
  py::handle w0 = weights[0];
  if (!py::isinstance<py::array>(w0)) throw py::type_error("weights[0]: expected a numpy array");
  auto dtype = py::reinterpret_borrow<py::array>(w0).dtype();
  if (dtype.is(py::dtype::of<float>())) return f(float{});
  if (dtype.is(py::dtype::of<double>())) return f(double{});
  throw py::type_error("weights[0]: expected dtype float32 or float64, got " + std::string(py::str(dtype)));
}

using Sizes = std::vector<Index>;

// Sweeps jump to each layer's minimiser in closed form, which exists for the clipped hard sigmoid.
template <class T>
void check_sweep(const eqcore::Net<T>& net, bool clip, const std::string& what) {
  if (net.activation != eqcore::Activation::HardSigmoid || !clip)
    throw py::value_error(what + ": needs the hard sigmoid with clip=True (each layer's minimiser is then clip(u, 0, 1)); "
                                 "use the Euler dynamics otherwise");
}

py::object relax(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                 const py::sequence& biases, py::handle x, py::handle state, py::handle target, double beta,
                 Index steps, double dt, bool clip, double tol, bool record, bool sweep, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    if (sweep) check_sweep(m.net, clip, "dynamics='sweep'");
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    check_steps(steps);
    const T tdt = check_dt<T>(dt);
    check_tol(tol);
    const T tb = beta == 0 ? T(0) : check_beta<T>(beta);
    const T* y = nullptr;
    if (!target.is_none()) y = m.target(target, B);
    if (beta != 0 && y == nullptr) throw py::value_error("target: required when beta != 0");

    // The result is a fresh state (it never shares memory with the caller's arrays).
    eqcore::LayerPtrs<T> s;
    py::list out = m.new_layers(B, s);
    if (state.is_none()) {
      for (int k = 1; k <= m.layers(); ++k) std::fill_n(s[k - 1], B * m.size(k), T(0));
    } else {
      auto s0 = m.layers_of(state, "state", B);
      for (int k = 1; k <= m.layers(); ++k) std::copy_n(s0[k - 1], B * m.size(k), s[k - 1]);
    }
    eqcore::LayerPtrs<T> traj;
    py::list trajectory;
    if (record) trajectory = new_trajectory<T>(m, steps, B, traj);
    eqcore::RelaxOptions<T> opt;
    opt.steps = steps;
    opt.dt = tdt;
    opt.beta = tb;
    opt.clip = clip;
    opt.sweep = sweep;
    opt.tol = static_cast<T>(tol);
    opt.threads = check_threads(threads);
    eqcore::RelaxResult res;
    {
      // Safe without the GIL: the kernel reads and writes only numpy buffers held alive by
      // `m` and `out`, and touches no Python object.
      py::gil_scoped_release nogil;
      res = eqcore::relax(m.net, static_cast<const T*>(xa.data()), B, s, y, opt, traj);
    }
    if (res.status == eqcore::Status::Diverged) {
      m.require_finite_parameters();  // a NaN parameter is named, not blamed on dt
      throw_divergence(res, steps, dt, beta);
    }
    return py::make_tuple(out, res.steps, record ? py::object(cut_trajectory(trajectory, res.steps + 1)) : py::none());
  });
}

py::object energy(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                  const py::sequence& biases, py::handle x, py::handle state, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.layers_of(state, "state", B);
    py::array_t<T> out(B);
    T* o = out.mutable_data();
    check_threads(threads);
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and out
      eqcore::energy(m.net, static_cast<const T*>(xa.data()), B, s, o, threads);
    }
    if (!eqcore::all_finite(Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(o, B))) m.non_finite_result("energy");
    return out;
  });
}

py::object cost(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                const py::sequence& biases, py::handle state, py::handle target) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto s = m.layers_of(state, "state", -1);  // every layer is checked, though only s_L is read
    const Index B = m.last_batch;
    const T* y = m.target(target, B);
    py::array_t<T> out(B);
    T* o = out.mutable_data();
    eqcore::cost(B, m.size(m.layers()), s.back(), y, o);
    if (!eqcore::all_finite(Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(o, B))) m.non_finite_result("cost");
    return out;
  });
}

py::object energy_grad_state(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                             const py::sequence& biases, py::handle x, py::handle state, py::handle target,
                             double beta, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.layers_of(state, "state", B);
    const T tb = beta == 0 ? T(0) : check_beta<T>(beta);
    const T* y = target.is_none() ? nullptr : m.target(target, B);
    if (beta != 0 && y == nullptr) throw py::value_error("target: required when beta != 0");
    eqcore::LayerPtrs<T> g;
    py::list out = m.new_layers(B, g);
    check_threads(threads);
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and out
      eqcore::energy_grad_state(m.net, static_cast<const T*>(xa.data()), B, s, y, tb, g, threads);
    }
    m.require_finite_results(g, B, "energy_grad_state");
    return out;
  });
}

py::object energy_grad_params(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                              const py::sequence& biases, py::handle x, py::handle state, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.layers_of(state, "state", B);
    eqcore::LayerPtrs<T> gW, gb;
    py::tuple out = m.new_params(gW, gb);
    check_threads(threads);
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and out
      eqcore::energy_grad_params(m.net, static_cast<const T*>(xa.data()), B, s, gW, gb, threads);
    }
    m.require_finite_param_shaped(gW, gb, "energy_grad_params");
    return out;
  });
}

py::object hvp(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
               const py::sequence& biases, py::handle x, py::handle state, py::handle v, double beta, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.layers_of(state, "state", B);
    auto va = m.layers_of(v, "v", B);
    const T tb = beta == 0 ? T(0) : check_beta<T>(beta);
    eqcore::LayerPtrs<T> h;
    py::list out = m.new_layers(B, h);
    check_threads(threads);
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and out
      eqcore::hvp(m.net, static_cast<const T*>(xa.data()), B, s, va, tb, h, threads);
    }
    m.require_finite_results(h, B, "hvp");
    return out;
  });
}

py::object mixed_hvp(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                     const py::sequence& biases, py::handle x, py::handle state, py::handle v, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.layers_of(state, "state", B);
    auto va = m.layers_of(v, "v", B);
    eqcore::LayerPtrs<T> gW, gb;
    py::tuple out = m.new_params(gW, gb);
    check_threads(threads);
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and out
      eqcore::mixed_hvp(m.net, static_cast<const T*>(xa.data()), B, s, va, gW, gb, threads);
    }
    m.require_finite_param_shaped(gW, gb, "mixed_hvp");
    return out;
  });
}

py::object rbp(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
               const py::sequence& biases, py::handle x, py::handle state, py::handle target, Index steps, double dt,
               double tol, bool record, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s0 = m.layers_of(state, "state", B);
    const T* y = m.target(target, B);
    check_steps(steps);
    const T tdt = check_dt<T>(dt);
    check_tol(tol);
    check_threads(threads);
    eqcore::LayerPtrs<T> sbar, sum, traj;
    py::list sbar_out = m.new_layers(B, sbar), sum_out = m.new_layers(B, sum), trajectory;
    if (record) trajectory = new_trajectory<T>(m, steps, B, traj);
    eqcore::RbpResult res;
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and the outputs
      res = eqcore::rbp(m.net, static_cast<const T*>(xa.data()), B, s0, y, steps, tdt,
                        static_cast<T>(tol), sbar, sum, traj, threads);
    }
    if (res.status == eqcore::Status::Diverged) {
      m.require_finite_parameters();
      std::ostringstream msg;
      msg << "RBP diverged: Sbar became non-finite by step " << res.failed_step << " (dt=" << dt
          << "); (I - dt H) must be a contraction: H(s0) is not positive definite (s0 is not a stable, smooth "
             "fixed point, e.g. hard-sigmoid units clipped at 0 or 1) or dt is too large";
      throw DivergenceError(msg.str());
    }
    return py::make_tuple(sbar_out, sum_out, res.steps,
                          record ? py::object(cut_trajectory(trajectory, res.steps + 1)) : py::none());
  });
}

py::object solve_hessian(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                         const py::sequence& biases, py::handle x, py::handle state, py::handle rhs, double beta,
                         double tol, Index max_iter, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.layers_of(state, "state", B);
    auto b = m.layers_of(rhs, "rhs", B);
    const T tb = beta == 0 ? T(0) : check_beta<T>(beta);
    if (!(tol > 0) || !std::isfinite(tol)) throw py::value_error("tol: expected a finite number > 0, got " + number(tol));
    if (max_iter < 1) throw py::value_error("max_iter: expected an integer >= 1, got " + std::to_string(max_iter));
    check_threads(threads);
    eqcore::LayerPtrs<T> z;
    py::list out = m.new_layers(B, z);
    eqcore::SolveResult res;
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m and out
      res = eqcore::solve_hessian(m.net, static_cast<const T*>(xa.data()), B, s, b, tb,
                                  static_cast<T>(tol), max_iter, z, threads);
    }
    if (!res.positive_definite)
      throw NotPositiveDefiniteError(
          "the Hessian of the energy is not positive definite at this state (conjugate gradients met a direction "
          "of non-positive curvature): the state is not a stable fixed point; relax it further first");
    return py::make_tuple(out, res.iterations, res.residual);
  });
}

py::object bptt(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                const py::sequence& biases, py::handle x, py::handle state, py::handle target, Index steps, double dt,
                bool clip, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    const T* y = m.target(target, B);
    check_steps(steps);
    const T tdt = check_dt<T>(dt);
    check_threads(threads);
    std::vector<eqcore::Matrix<T>> zeros;
    eqcore::ConstLayerPtrs<T> s;
    if (state.is_none()) {
      for (int k = 1; k <= m.layers(); ++k) zeros.push_back(eqcore::Matrix<T>::Zero(B, m.size(k)));
      for (auto& z : zeros) s.push_back(z.data());
    } else {
      s = m.layers_of(state, "state", B);
    }
    eqcore::LayerPtrs<T> gW, gb;
    py::tuple out = m.new_params(gW, gb);
    eqcore::RelaxResult res;
    {
      py::gil_scoped_release nogil;  // numpy buffers only, kept alive by m, zeros and out
      res = eqcore::bptt(m.net, static_cast<const T*>(xa.data()), B, s, y, steps, tdt, clip, gW, gb,
                         threads);
    }
    if (res.status == eqcore::Status::Diverged) {
      m.require_finite_parameters();  // a NaN parameter is named, not blamed on dt
      throw_divergence(res, steps, dt, 0.0);
    }
    return out;
  });
}

py::object ep_step(const Sizes& sizes, const std::string& activation, const py::sequence& weights,
                   const py::sequence& biases, py::handle x, py::handle state, py::handle target, Index free_steps,
                   Index nudged_steps, double dt, double beta, bool clip, bool symmetric, bool free_sweep,
                   const std::vector<double>& learning_rates, int threads) {
  return dispatch(weights, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Model<T> m(sizes, activation, weights, biases);
    if (free_sweep) check_sweep(m.net, clip, "free_dynamics='sweep'");
    auto xa = m.input(x);
    const Index B = m.batch(xa);
    auto s = m.writable_layers_of(state, "state", B);
    const T* y = m.target(target, B);
    check_steps(free_steps);
    check_steps(nudged_steps);
    const T tdt = check_dt<T>(dt);
    if (beta == 0) throw py::value_error("beta: expected a non-zero number, got 0");
    const T tb = check_beta<T>(beta);
    // The update divides by beta: its reciprocal must exist in T too (|beta| >= ~3e-39 in float32).
    if (!std::isfinite(T(1) / tb))
      throw py::value_error("beta: " + number(beta) + " is too small for " + dtype_name<T>() + " (1/beta overflows)");
    // The update scales by lr / (beta' B), beta' = beta or 2 beta: beta' B must exist in T too.
    if (!std::isfinite(static_cast<T>(std::abs(beta) * (symmetric ? 2.0 : 1.0) * static_cast<double>(B))))
      throw py::value_error("beta: " + number(beta) + " times the batch size overflows " + dtype_name<T>());
    if (learning_rates.size() != static_cast<std::size_t>(m.layers()))
      throw py::value_error("learning_rates: expected " + std::to_string(m.layers()) + " values (one per weight matrix), got " +
                            std::to_string(learning_rates.size()));
    eqcore::EpStepOptions<T> opt;
    for (double lr : learning_rates) {
      if (!std::isfinite(lr)) throw py::value_error("learning_rates: expected finite numbers, got " + number(lr));
      opt.learning_rates.push_back(narrow<T>(lr, "learning_rates", false));
      if (!std::isfinite(static_cast<T>(lr / std::abs(beta))))
        throw py::value_error("learning_rates: " + number(lr) + " / |beta| overflows " + dtype_name<T>());
    }
    opt.free_steps = free_steps;
    opt.nudged_steps = nudged_steps;
    opt.dt = tdt;
    opt.beta = tb;
    opt.clip = clip;
    opt.symmetric = symmetric;
    opt.free_sweep = free_sweep;
    opt.threads = check_threads(threads);
    eqcore::RelaxResult res;
    {
      // Safe without the GIL: numpy buffers only, kept alive by m. The parameters are written
      // in place, as the caller asked.
      py::gil_scoped_release nogil;
      res = eqcore::ep_step(m.net, m.mutable_weights, m.mutable_biases, static_cast<const T*>(xa.data()), B, s, y, opt);
    }
    if (res.status == eqcore::Status::Diverged) {
      m.require_finite_parameters();  // a NaN parameter is named, not blamed on dt
      throw_divergence(res, free_steps + nudged_steps, dt, beta);
    }
    return py::none();
  });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "eqcore native kernel (Eigen). Use the eqcore Python package rather than this module.";
  py::register_exception<DivergenceError>(m, "DivergenceError", PyExc_ArithmeticError);
  py::register_exception<NotPositiveDefiniteError>(m, "NotPositiveDefiniteError", PyExc_ArithmeticError);

  m.def("relax", &relax, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"),
        py::arg("x"), py::arg("state"), py::arg("target"), py::arg("beta"), py::arg("steps"), py::arg("dt"),
        py::arg("clip"), py::arg("tol"), py::arg("record"), py::arg("sweep"), py::arg("threads"),
        "Relaxation of a batch (Euler steps or even/odd sweeps); returns (state list, steps taken, trajectory list or None).");
  m.def("energy", &energy, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"),
        py::arg("x"), py::arg("state"), py::arg("threads"), "Energy per example, shape (B,).");
  m.def("cost", &cost, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"),
        py::arg("state"), py::arg("target"), "Cost 1/2 |s_L - y|^2 per example, shape (B,).");
  m.def("energy_grad_state", &energy_grad_state, py::arg("sizes"), py::arg("activation"), py::arg("weights"),
        py::arg("biases"), py::arg("x"), py::arg("state"), py::arg("target"), py::arg("beta"), py::arg("threads"),
        "dE^beta/ds per example, a list like the state.");
  m.def("energy_grad_params", &energy_grad_params, py::arg("sizes"), py::arg("activation"), py::arg("weights"),
        py::arg("biases"), py::arg("x"), py::arg("state"), py::arg("threads"),
        "dE/dtheta averaged over the batch, as (weight list, bias list).");
  m.def("hvp", &hvp, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"), py::arg("x"),
        py::arg("state"), py::arg("v"), py::arg("beta"), py::arg("threads"),
        "Hessian-vector product d2E^beta/ds2 v per example, a list like the state.");
  m.def("mixed_hvp", &mixed_hvp, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"),
        py::arg("x"), py::arg("state"), py::arg("v"), py::arg("threads"),
        "(d2E/dtheta ds) v averaged over the batch, as (weight list, bias list).");
  m.def("rbp", &rbp, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"), py::arg("x"),
        py::arg("state"), py::arg("target"), py::arg("steps"), py::arg("dt"), py::arg("tol"), py::arg("record"),
        py::arg("threads"),
        "Recurrent Backpropagation at s0: returns (Sbar_T list, sum_{t<T} Sbar_t list, steps taken, trajectory or None).");
  m.def("solve_hessian", &solve_hessian, py::arg("sizes"), py::arg("activation"), py::arg("weights"),
        py::arg("biases"), py::arg("x"), py::arg("state"), py::arg("rhs"), py::arg("beta"), py::arg("tol"),
        py::arg("max_iter"), py::arg("threads"),
        "Per-example conjugate gradients on H: returns (solution list, iterations, relative residual).");
  m.def("bptt", &bptt, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"), py::arg("x"),
        py::arg("state"), py::arg("target"), py::arg("steps"), py::arg("dt"), py::arg("clip"), py::arg("threads"),
        "Gradient of the mean cost after `steps` free-phase Euler steps, by backpropagation through time.");
  m.def("ep_step", &ep_step, py::arg("sizes"), py::arg("activation"), py::arg("weights"), py::arg("biases"),
        py::arg("x"), py::arg("state"), py::arg("target"), py::arg("free_steps"), py::arg("nudged_steps"), py::arg("dt"),
        py::arg("beta"), py::arg("clip"), py::arg("symmetric"), py::arg("free_sweep"), py::arg("learning_rates"),
        py::arg("threads"),
        "One fused EP training step: free phase (state updated in place), nudged phase(s), parameter update in place.");
}
