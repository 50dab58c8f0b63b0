// Products that a GEMM does badly, on register-blocked row combinations (combine_rows):
// - mostly-zero inputs (MNIST images are ~80 % zeros): the input drive x W_0 and the update
//   W_0 += c x^T d cost one pass over a row of W_0 (or of d) per non-zero instead of a dense
//   GEMM over every entry of x;
// - thin layers (a classifier's 10 outputs): the per-step products rho_k W_k into a thin layer
//   and rho_{k+1} W_k^T out of it are too thin for a GEMM's blocking, and a GEMM repacks W_k
//   every step; ThinWeights packs it once per call instead.
#pragma once

#include "eqcore/parallel.hpp"
#include "eqcore/types.hpp"

#include <algorithm>
#include <utility>
#include <vector>

namespace eqcore {

// Inputs with at most this share of non-zeros take the sparse paths. A non-zero costs about
// one FMA per column of W_0 from cache, where the dense GEMM spends about that per entry of x
// once its packing is counted: sparse wins below roughly half density. Exact zeros are
// skipped, so a row of W_0 that meets only zero inputs in a batch is never read: a non-finite
// weight there changes no result (the dense GEMM would make it 0 * inf = NaN), and the EP
// update leaves that row as it is.
constexpr double kSparseInputDensity = 0.5;

// The non-zeros of a row-major matrix, row by row (CSR): row i holds entries
// [start[i], start[i+1]) of (index, value).
template <class T>
struct SparseRows {
  std::vector<Index> start, index;
  std::vector<T> value;
  Index rows() const { return static_cast<Index>(start.size()) - 1; }
};

// x (rows x cols, row-major) as SparseRows when its density is at most kSparseInputDensity;
// returns false (and leaves `out` unspecified) otherwise.
template <class T>
bool compress_rows(const T* x, Index rows, Index cols, SparseRows<T>& out, int threads = 1) {
  const Index total = rows * cols;
  out.start.resize(static_cast<std::size_t>(rows) + 1);
  Index* start = out.start.data();
  parallel_for(rows, threads, [&](Range r) {  // non-zeros per row (into start[i + 1])
    for (Index i = r.begin; i < r.end; ++i) {
      Index count = 0;
      for (Index j = 0; j < cols; ++j) count += x[i * cols + j] != T(0);
      start[i + 1] = count;
    }
  });
  start[0] = 0;
  for (Index i = 0; i < rows; ++i) start[i + 1] += start[i];
  const Index nnz = start[rows];
  if (total == 0 || nnz > static_cast<Index>(kSparseInputDensity * static_cast<double>(total))) return false;
  out.index.resize(static_cast<std::size_t>(nnz));
  out.value.resize(static_cast<std::size_t>(nnz));
  Index* index = out.index.data();
  T* value = out.value.data();
  parallel_for(rows, threads, [&](Range r) {
    Index sink_index = 0;
    T sink_value = T(0);
    for (Index i = r.begin; i < r.end; ++i) {
      const T* row = x + i * cols;
      Index at = start[i];
      const Index end = start[i + 1];
      // Branchless (zeros and non-zeros of images alternate too irregularly for a branch to
      // predict): every entry is written, and kept only if non-zero; past the row's last
      // non-zero, writes go to a sink instead of the next row's slots.
      for (Index j = 0; j < cols; ++j) {
        const bool inside = at < end;
        *(inside ? index + at : &sink_index) = j;
        *(inside ? value + at : &sink_value) = row[j];
        at += row[j] != T(0);
      }
    }
  });
  return true;
}

// The same non-zeros column by column (CSC of the matrix = CSR of its transpose), rows
// ascending within a column. A counting sort, its two passes split over threads by rows: each
// thread counts its rows' entries per column, then writes them after those of the threads
// before it, so the order (and the result) does not depend on the thread count.
template <class T>
void transpose(const SparseRows<T>& a, Index cols, SparseRows<T>& out, int threads = 1) {
  const Index rows = a.rows();
  const int nt = threads_for(rows, threads);
  std::vector<Index> slots(static_cast<std::size_t>(nt * cols));  // [t][j]: count, then write position
  out.start.resize(static_cast<std::size_t>(cols) + 1);
  out.index.resize(a.index.size());
  out.value.resize(a.value.size());
  run_team(nt, [&](int t, int team) {
    Index* mine = slots.data() + t * cols;
    std::fill_n(mine, cols, Index(0));
    const Range r = part(rows, t, team);
    for (Index e = a.start[r.begin]; e < a.start[r.end]; ++e) ++mine[a.index[e]];
    team_barrier();
    if (t == 0) {
      out.start[0] = 0;
      for (Index j = 0; j < cols; ++j) {
        Index at = out.start[j];
        for (int u = 0; u < team; ++u) {
          const Index count = slots[u * cols + j];
          slots[u * cols + j] = at;
          at += count;
        }
        out.start[j + 1] = at;
      }
    }
    team_barrier();
    for (Index i = r.begin; i < r.end; ++i)
      for (Index e = a.start[i]; e < a.start[i + 1]; ++e) {
        const Index at = mine[a.index[e]]++;
        out.index[at] = i;
        out.value[at] = a.value[e];
      }
  });
}

namespace detail {

// Columns [c, c + P * lanes) of combine_rows, P packets held in registers across the entries.
template <int P, class T>
void combine_block(const Index* index, const T* value, Index count, const T* M, Index ld, Index c, T scale,
                   const T* base, T* out) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index kLanes = Eigen::internal::packet_traits<T>::size;
  Packet acc[P];
  for (int q = 0; q < P; ++q) acc[q] = Eigen::internal::pset1<Packet>(T(0));
  for (Index e = 0; e < count; ++e) {
    const Packet v = Eigen::internal::pset1<Packet>(value[e]);
    const T* row = M + index[e] * ld + c;
    for (int q = 0; q < P; ++q)
      acc[q] = Eigen::internal::pmadd(v, Eigen::internal::ploadu<Packet>(row + q * kLanes), acc[q]);
  }
  const Packet s = Eigen::internal::pset1<Packet>(scale);
  for (int q = 0; q < P; ++q)
    Eigen::internal::pstoreu(out + c + q * kLanes,
                             base ? Eigen::internal::pmadd(s, acc[q], Eigen::internal::ploadu<Packet>(base + c + q * kLanes))
                                  : Eigen::internal::pmul(s, acc[q]));
}

// out[c] = base[c] + scale * sum_e value[e] * M[index[e], c] for c in cols, M row-major with
// leading dimension ld (out may be base; no base: 0). The sums run over the entries in order, in
// registers: 8, 4, 2 or 1 packets of columns at a time, so each entry costs one load and one
// FMA per packet; the last columns (fewer than a packet) are scalar.
template <class T>
void combine_rows(const Index* index, const T* value, Index count, const T* M, Index ld, Range cols, T scale,
                  const T* base, T* out) {
  constexpr Index kLanes = Eigen::internal::packet_traits<T>::size;
  Index c = cols.begin;
  for (; c + 8 * kLanes <= cols.end; c += 8 * kLanes) combine_block<8>(index, value, count, M, ld, c, scale, base, out);
  if (c + 4 * kLanes <= cols.end) {
    combine_block<4>(index, value, count, M, ld, c, scale, base, out);
    c += 4 * kLanes;
  }
  if (c + 2 * kLanes <= cols.end) {
    combine_block<2>(index, value, count, M, ld, c, scale, base, out);
    c += 2 * kLanes;
  }
  if (c + kLanes <= cols.end) {
    combine_block<1>(index, value, count, M, ld, c, scale, base, out);
    c += kLanes;
  }
  for (; c < cols.end; ++c) {
    T acc = T(0);
    for (Index e = 0; e < count; ++e) acc += value[e] * M[index[e] * ld + c];
    out[c] = base ? base[c] + scale * acc : scale * acc;
  }
}

}  // namespace detail

// D (B x n_1) = x W_0 + b_1 with x given by its non-zero rows; columns split over threads.
template <class T>
void sparse_input_drive(const Net<T>& net, const SparseRows<T>& x, Matrix<T>& D, int threads) {
  const Index B = x.rows(), n1 = net.size(1);
  D.resize(B, n1);
  // Column blocks outermost: the rows of W_0 a block reads (n_0 x kBlock scalars) stay in cache
  // while every example passes over them; example by example over all columns would stream
  // W_0 from memory once per example.
  constexpr Index kBlock = 128;
  parallel_for(n1, threads, [&](Range cols) {
    for (Index c = cols.begin; c < cols.end; c += kBlock) {
      const Range block{c, std::min(c + kBlock, cols.end)};
      for (Index i = 0; i < B; ++i) {
        const Index first = x.start[i];
        detail::combine_rows(x.index.data() + first, x.value.data() + first, x.start[i + 1] - first, net.weights[0],
                             n1, block, T(1), net.biases[0], D.data() + i * n1);
      }
    }
  }, Eigen::internal::packet_traits<T>::size);  // whole packets per thread: no scalar tail but the last
}

// Rows `pixels` of W_0 (n_0 x n_1): W_0[p, :] += c sum_i x[i, p] d[i, :], with x given by its
// columns (transpose() of its rows) and d (B x n_1) row-major. Rows of W_0 that no example
// touches are skipped: their update is exactly zero.
template <class T>
void sparse_input_update(const SparseRows<T>& x_columns, const T* d, Index n1, T c, Range pixels, T* W0) {
  for (Index p = pixels.begin; p < pixels.end; ++p) {
    const Index first = x_columns.start[p], count = x_columns.start[p + 1] - first;
    if (count == 0) continue;
    T* row = W0 + p * n1;
    detail::combine_rows(x_columns.index.data() + first, x_columns.value.data() + first, count, d, n1, Range{0, n1}, c,
                         row, row);
  }
}

// A thin layer's weights W (n x m, m <= kThinLayer), packed once per relaxation for the two
// per-step products: `padded` (n x width, zero-filled past m, width a whole number of packets)
// for rho_n W and `transposed` (m x n) for rho_m W^T.
constexpr Index kThinLayer = 16;

template <class T>
class ThinWeights {
 public:
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr Index kLanes = Eigen::internal::packet_traits<T>::size;

  ThinWeights(const T* W, Index n, Index m) : n_(n), m_(m), width_((m + kLanes - 1) / kLanes * kLanes) {
    eigen_assert(m >= 1 && m <= kThinLayer && "ThinWeights: only for layers of 1..kThinLayer units");
    padded_.setZero(n * width_);
    transposed_.resize(m * n);
    for (Index j = 0; j < n; ++j)
      for (Index c = 0; c < m; ++c) {
        padded_[j * width_ + c] = W[j * m + c];
        transposed_[c * n + j] = W[j * m + c];
      }
  }

  // out (rows x m) = R (rows x n) W + bias. The padded W is read once per block of 4 rows (its
  // loads are what bounds this product); two partial sums per row (even and odd j, in named
  // registers) give 8 independent FMA chains. Every row takes the same operations in the same
  // order, wherever it sits in a block (results do not depend on the batch around an example).
  void times(const T* R, Index rows, const T* bias, T* out) const {
    Index i = 0;
    if (width_ == kLanes) {
      for (; i + 4 <= rows; i += 4) times_rows<4>(R, i, bias, out);
      for (; i < rows; ++i) times_rows<1>(R, i, bias, out);
    } else {
      for (; i < rows; ++i) times_row(R, i, bias, out);
    }
  }

  // out (rows x n) = base + R (rows x m) W^T (base may be out, or nullptr for 0). Packet of
  // columns by packet of columns, the m packets of W^T held in registers (m a compile-time
  // constant, 1..kThinLayer) while every row passes: rows are independent FMA chains.
  void times_transposed(const T* R, Index rows, const T* base, T* out) const {
    dispatch_m(std::make_integer_sequence<int, kThinLayer + 1>{}, R, rows, base, out);
  }

 private:
  template <int... Ms>
  void dispatch_m(std::integer_sequence<int, Ms...>, const T* R, Index rows, const T* base, T* out) const {
    ((Ms == m_ ? (times_transposed_impl<Ms>(R, rows, base, out), true) : false) || ...);
  }

  template <int M>
  void times_transposed_impl(const T* R, Index rows, const T* base, T* out) const {
    using namespace Eigen::internal;
    if constexpr (M > 0) {
      Index c = 0;
      for (; c + kLanes <= n_; c += kLanes) {
        Packet wt[M];
        for (int k = 0; k < M; ++k) wt[k] = ploadu<Packet>(transposed_.data() + k * n_ + c);
        for (Index i = 0; i < rows; ++i) {
          const T* r = R + i * M;
          Packet acc = pmul(pset1<Packet>(r[0]), wt[0]);
          for (int k = 1; k < M; ++k) acc = pmadd(pset1<Packet>(r[k]), wt[k], acc);
          T* o = out + i * n_ + c;
          pstoreu(o, base ? padd(ploadu<Packet>(base + i * n_ + c), acc) : acc);
        }
      }
      for (; c < n_; ++c)  // the last columns, fewer than a packet
        for (Index i = 0; i < rows; ++i) {
          const T* r = R + i * M;
          T acc = r[0] * transposed_[c];
          for (int k = 1; k < M; ++k) acc += r[k] * transposed_[k * n_ + c];
          out[i * n_ + c] = base ? base[i * n_ + c] + acc : acc;
        }
    }
  }

  template <int RB>
  void times_rows(const T* R, Index i0, const T* bias, T* out) const {
    using namespace Eigen::internal;
    Packet acc[2 * RB];
    for (int a = 0; a < 2 * RB; ++a) acc[a] = pset1<Packet>(T(0));
    const T* r = R + i0 * n_;
    const T* w = padded_.data();
    Index j = 0;
    for (; j + 2 <= n_; j += 2, w += 2 * width_) {
      const Packet w0 = ploadu<Packet>(w), w1 = ploadu<Packet>(w + width_);
      for (int b = 0; b < RB; ++b) {
        acc[2 * b] = pmadd(pset1<Packet>(r[b * n_ + j]), w0, acc[2 * b]);
        acc[2 * b + 1] = pmadd(pset1<Packet>(r[b * n_ + j + 1]), w1, acc[2 * b + 1]);
      }
    }
    if (j < n_) {
      const Packet w0 = ploadu<Packet>(w);
      for (int b = 0; b < RB; ++b) acc[2 * b] = pmadd(pset1<Packet>(r[b * n_ + j]), w0, acc[2 * b]);
    }
    alignas(64) T sum[kLanes];
    for (int b = 0; b < RB; ++b) {
      pstoreu(sum, padd(acc[2 * b], acc[2 * b + 1]));
      T* o = out + (i0 + b) * m_;
      for (Index c = 0; c < m_; ++c) o[c] = sum[c] + bias[c];
    }
  }

  // One row, one packet of columns at a time (any width), four partial sums.
  void times_row(const T* R, Index i, const T* bias, T* out) const {
    using namespace Eigen::internal;
    alignas(64) T sum[kThinLayer + kLanes];
    const T* r = R + i * n_;
    for (Index q = 0; q < width_; q += kLanes) {
      const T* w = padded_.data() + q;
      Packet a0 = pset1<Packet>(T(0)), a1 = a0, a2 = a0, a3 = a0;
      Index j = 0;
      for (; j + 4 <= n_; j += 4, w += 4 * width_) {
        a0 = pmadd(pset1<Packet>(r[j]), ploadu<Packet>(w), a0);
        a1 = pmadd(pset1<Packet>(r[j + 1]), ploadu<Packet>(w + width_), a1);
        a2 = pmadd(pset1<Packet>(r[j + 2]), ploadu<Packet>(w + 2 * width_), a2);
        a3 = pmadd(pset1<Packet>(r[j + 3]), ploadu<Packet>(w + 3 * width_), a3);
      }
      for (; j < n_; ++j, w += width_) a0 = pmadd(pset1<Packet>(r[j]), ploadu<Packet>(w), a0);
      pstoreu(sum + q, padd(padd(a0, a1), padd(a2, a3)));
    }
    T* o = out + i * m_;
    for (Index c = 0; c < m_; ++c) o[c] = sum[c] + bias[c];
  }

  using Buffer = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  Index n_, m_, width_;
  Buffer padded_, transposed_;
};

}  // namespace eqcore
