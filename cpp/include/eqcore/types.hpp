// Basic types shared by the eqcore kernel. Eigen only: no Python in here.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <vector>

namespace eqcore {

using Index = Eigen::Index;

// Every array that crosses the Python boundary is row-major (numpy's default layout), so
// one row is one example and a block of rows is contiguous memory.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;
template <class T>
using RowVectorMap = Eigen::Map<RowVector<T>>;
template <class T>
using ConstRowVectorMap = Eigen::Map<const RowVector<T>>;

// Whether every entry is finite. inf * 0 and NaN * 0 are NaN and any sum with a NaN is NaN, so
// one vectorised sum decides; Eigen's allFinite() is a scalar loop, ~10x slower (it was ~40 us
// of every MNIST training step at batch 64, with the GIL held).
template <class Derived>
bool all_finite(const Eigen::DenseBase<Derived>& a) {
  using T = typename Derived::Scalar;
  return !std::isnan((a.derived().array() * T(0)).sum());
}

enum class Activation : int { HardSigmoid = 0, Sigmoid = 1 };

// Outcome of a kernel call. Kernels never throw (they run inside OpenMP regions); the
// binding layer turns a failure status into a Python exception.
enum class Status : int { Ok = 0, Diverged = 1 };

// A layered network, viewed in place: the kernel never owns or copies parameters.
//   sizes   [n_0, ..., n_L], n_0 = input size, L >= 1
//   weights W[k], k = 0..L-1: (n_k, n_{k+1}) row-major
//   biases  b[k-1], k = 1..L: (n_k)
template <class T>
struct Net {
  Activation activation = Activation::HardSigmoid;
  std::vector<Index> sizes;
  std::vector<const T*> weights;
  std::vector<const T*> biases;

  int layers() const { return static_cast<int>(sizes.size()) - 1; }
  Index size(int k) const { return sizes[static_cast<std::size_t>(k)]; }
  Index state_size() const {
    Index n = 0;
    for (int k = 1; k <= layers(); ++k) n += size(k);
    return n;
  }
  Index max_size() const {
    Index n = 0;
    for (int k = 1; k <= layers(); ++k) n = std::max(n, size(k));
    return n;
  }
  ConstMatrixMap<T> weight(int k) const {
    return {weights[static_cast<std::size_t>(k)], size(k), size(k + 1)};
  }
  // Bias of free layer k (1..L).
  ConstRowVectorMap<T> bias(int k) const { return {biases[static_cast<std::size_t>(k - 1)], size(k)}; }
};

// A batch of per-layer arrays for free layers 1..L: layer[k-1] points to (rows, n_k)
// row-major storage. Used for states, directions v and results shaped like the state.
template <class T>
using LayerPtrs = std::vector<T*>;
template <class T>
using ConstLayerPtrs = std::vector<const T*>;

}  // namespace eqcore
