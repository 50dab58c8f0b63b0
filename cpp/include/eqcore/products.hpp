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
#include <array>
#include <utility>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace eqcore {

// Inputs with at most this share of non-zeros take the sparse paths. A non-zero costs about
// one FMA per column of W_0 from cache, where the dense GEMM spends about that per entry of x
// once its packing is counted: sparse wins below roughly half density. Exact zeros are
// skipped, so a row of W_0 that meets only zero inputs in a batch is never read: a non-finite
// weight there changes no result (the dense GEMM would make it 0 * inf = NaN), and the EP
// update leaves that row as it is.
constexpr double kSparseInputDensity = 0.5;

// The non-zeros of a row-major matrix, row by row (CSR): row i holds entries
// [start[i], start[i+1]) of (index, value), indices ascending. The same type holds the
// non-zeros column by column (CSC = the CSR of the transpose, see transpose()). The vectors
// may be longer than the start[rows()] entries in use (compress_rows keeps its capacity);
// entries past those are unspecified.
template <class T>
struct SparseRows {
  std::vector<Index> start, index;
  std::vector<T> value;
  Index rows() const { return static_cast<Index>(start.size()) - 1; }
  Index count(Index i) const { return start[static_cast<std::size_t>(i) + 1] - start[static_cast<std::size_t>(i)]; }
  const Index* indices(Index i) const { return index.data() + start[static_cast<std::size_t>(i)]; }
  const T* values(Index i) const { return value.data() + start[static_cast<std::size_t>(i)]; }
};

namespace detail {

// Row entries from column j on, appended at `at`; returns the new count. Branchless (zeros and
// non-zeros of images alternate too irregularly for a branch to predict): every entry is
// written to the next free slot, which only a non-zero claims.
template <class T>
Index append_nonzeros(const T* row, Index j, Index cols, Index at, Index* index, T* value) {
  for (; j < cols; ++j) {
    index[at] = j;
    value[at] = row[j];
    at += row[j] != T(0);
  }
  return at;
}

#ifdef __AVX512F__
static_assert(sizeof(Index) == 8, "append_nonzero_packets stores indices as 64-bit lanes");

// 16 floats (8 doubles) at a time: the non-zero lanes' values and column numbers compressed
// to the front of a register and stored whole, `at` advanced by the mask's population count
// (~3.5x faster than the scalar loop on MNIST rows). Lanes past the non-zeros land where the
// next entries will go: the count is at most the row's start + j, so a store ends within cols
// entries of the row's start. Returns the first column left for the scalar loop.
inline Index append_nonzero_packets(const float* row, Index cols, Index& at, Index* index, float* value) {
  const __m512i eight = _mm512_set1_epi64(8);
  __m512i lo = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  Index j = 0;
  for (; j + 16 <= cols; j += 16) {
    const __m512 v = _mm512_loadu_ps(row + j);
    const __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);  // NaN counts as non-zero
    _mm512_storeu_ps(value + at, _mm512_maskz_compress_ps(m, v));
    const __m512i hi = _mm512_add_epi64(lo, eight);
    const auto m_lo = static_cast<__mmask8>(m), m_hi = static_cast<__mmask8>(m >> 8);
    const Index n_lo = __builtin_popcount(m_lo);
    _mm512_storeu_si512(index + at, _mm512_maskz_compress_epi64(m_lo, lo));
    _mm512_storeu_si512(index + at + n_lo, _mm512_maskz_compress_epi64(m_hi, hi));
    at += n_lo + __builtin_popcount(m_hi);
    lo = _mm512_add_epi64(hi, eight);
  }
  return j;
}

inline Index append_nonzero_packets(const double* row, Index cols, Index& at, Index* index, double* value) {
  const __m512i eight = _mm512_set1_epi64(8);
  __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  Index j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m512d v = _mm512_loadu_pd(row + j);
    const __mmask8 m = _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_NEQ_UQ);
    _mm512_storeu_pd(value + at, _mm512_maskz_compress_pd(m, v));
    _mm512_storeu_si512(index + at, _mm512_maskz_compress_epi64(m, lanes));
    at += __builtin_popcount(m);
    lanes = _mm512_add_epi64(lanes, eight);
  }
  return j;
}
#endif

}  // namespace detail

// x (rows x cols, row-major) as SparseRows when its density is at most kSparseInputDensity;
// returns false (and leaves `out` unspecified) otherwise, as soon as a row goes over. The
// buffers grow with the non-zeros listed (a row needs at most cols free entries: see
// append_nonzero_packets) rather than to a worst case of half of x: they are kept between
// calls, and half of a large batch would be megabytes per thread.
template <class T>
bool compress_rows(const T* x, Index rows, Index cols, SparseRows<T>& out) {
  const Index limit = static_cast<Index>(kSparseInputDensity * static_cast<double>(rows * cols));
  out.start.resize(static_cast<std::size_t>(rows) + 1);
  Index at = 0;
  out.start[0] = 0;
  for (Index i = 0; i < rows; ++i) {
    if (at > limit) return false;
    const auto need = static_cast<std::size_t>(at + cols);
    if (out.index.size() < need || out.value.size() < need) {
      const std::size_t grown = std::max(need, out.index.size() + out.index.size() / 2);
      out.index.resize(grown);
      out.value.resize(grown);
    }
    const T* row = x + i * cols;
    Index j = 0;
#ifdef __AVX512F__
    j = detail::append_nonzero_packets(row, cols, at, out.index.data(), out.value.data());
#endif
    at = detail::append_nonzeros(row, j, cols, at, out.index.data(), out.value.data());
    out.start[static_cast<std::size_t>(i) + 1] = at;
  }
  return rows * cols > 0 && at <= limit;
}

// The same non-zeros column by column (CSC of the matrix = CSR of its transpose), rows
// ascending within a column: a counting sort.
template <class T>
void transpose(const SparseRows<T>& a, Index cols, SparseRows<T>& out) {
  const Index rows = a.rows();
  const Index nnz = a.start[static_cast<std::size_t>(rows)];
  out.start.assign(static_cast<std::size_t>(cols) + 1, 0);
  out.index.resize(static_cast<std::size_t>(nnz));
  out.value.resize(static_cast<std::size_t>(nnz));
  Index* start = out.start.data();
  for (Index e = 0; e < nnz; ++e) ++start[a.index[static_cast<std::size_t>(e)] + 1];
  for (Index j = 0; j < cols; ++j) start[j + 1] += start[j];
  static thread_local std::vector<Index> next;  // the next free slot of each column
  next.assign(out.start.begin(), out.start.end() - 1);
  for (Index i = 0; i < rows; ++i)
    for (Index e = a.start[static_cast<std::size_t>(i)]; e < a.start[static_cast<std::size_t>(i) + 1]; ++e) {
      const Index at = next[static_cast<std::size_t>(a.index[static_cast<std::size_t>(e)])]++;
      out.index[static_cast<std::size_t>(at)] = i;
      out.value[static_cast<std::size_t>(at)] = a.value[static_cast<std::size_t>(e)];
    }
}

namespace detail {

// Eigen's packet types are SIMD vector types, whose attributes GCC warns it drops from a template
// argument (harmless: Eigen does the same in its own headers, where the warning is silenced).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
// Whether T's packet type has masked loads and stores (AVX and AVX-512 floats).
template <class T>
constexpr bool kMaskedPackets =
    Eigen::internal::unpacket_traits<typename Eigen::internal::packet_traits<T>::type>::masked_load_available &&
    Eigen::internal::unpacket_traits<typename Eigen::internal::packet_traits<T>::type>::masked_store_available;

// The mask of a packet's first n lanes (packet types with masked loads only).
template <class T>
auto lanes_mask(Index n) {
  using Mask = typename Eigen::internal::unpacket_traits<typename Eigen::internal::packet_traits<T>::type>::mask_t;
  return static_cast<Mask>((Index(1) << n) - 1);
}
#pragma GCC diagnostic pop

// Columns [c, c + P * lanes + tail) of combine_rows in one pass over the entries: P whole
// packets, held in registers across the entries, and `tail` (< lanes) more columns when Tail:
// a masked packet where the packet type has masked loads (AVX, AVX-512 floats), else scalars.
// A column in a packet takes an FMA per entry, in order; a scalar tail column a multiply and an
// add. So any cut of a range into blocks that splits no packet (every block starting at a
// multiple of the lanes, as in all callers) gives the same bits.
// Lists can be short (the W_0 update's per-pixel lists): the loops over packets are unrolled so
// that the accumulators live in registers, with no zeroing or spilling of an array per call.
template <int P, bool Tail, class T>
void combine_block(const Index* index, const T* value, Index count, const T* M, Index ld, Index c, Index tail, T scale,
                   const T* base, T* out) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<T>::type;
  constexpr Index kLanes = packet_traits<T>::size;
  constexpr bool kMaskedTail = Tail && kMaskedPackets<T>;
  constexpr bool kScalarTail = Tail && !kMaskedTail;
  const Index t0 = c + P * kLanes;  // the tail's first column
  Packet acc[P > 0 ? P : 1];
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q) acc[q] = pset1<Packet>(T(0));
  Packet tail_acc = pset1<Packet>(T(0));
  std::array<T, kScalarTail ? kLanes : 1> scalar_acc{};
  const T* block = M + c;
  for (Index e = 0; e < count; ++e) {
    const Packet v = pset1<Packet>(value[e]);
    const T* row = block + index[e] * ld;
#pragma GCC unroll 16
    for (int q = 0; q < P; ++q) acc[q] = pmadd(v, ploadu<Packet>(row + q * kLanes), acc[q]);
    if constexpr (kMaskedTail) {
      tail_acc = pmadd(v, ploadu<Packet>(row + P * kLanes, lanes_mask<T>(tail)), tail_acc);
    } else if constexpr (kScalarTail) {
      // All tail columns in the same pass: their chains of dependent adds overlap.
      for (Index q = 0; q < tail; ++q) scalar_acc[q] += value[e] * row[P * kLanes + q];
    }
  }
  const Packet s = pset1<Packet>(scale);
#pragma GCC unroll 16
  for (int q = 0; q < P; ++q) {
    T* to = out + c + q * kLanes;
    pstoreu(to, base ? pmadd(s, acc[q], ploadu<Packet>(base + c + q * kLanes)) : pmul(s, acc[q]));
  }
  if constexpr (kMaskedTail) {
    const auto mask = lanes_mask<T>(tail);
    pstoreu(out + t0, base ? pmadd(s, tail_acc, ploadu<Packet>(base + t0, mask)) : pmul(s, tail_acc), mask);
  } else if constexpr (kScalarTail) {
    for (Index q = 0; q < tail; ++q)
      out[t0 + q] = base ? base[t0 + q] + scale * scalar_acc[q] : scale * scalar_acc[q];
  }
}

template <bool Tail, class T, int... Ps>
void combine_last_block(std::integer_sequence<int, Ps...>, int packets, const Index* index, const T* value, Index count,
                        const T* M, Index ld, Index c, Index tail, T scale, const T* base, T* out) {
  ((Ps == packets ? (combine_block<Ps, Tail>(index, value, count, M, ld, c, tail, scale, base, out), true) : false) ||
   ...);
}

// out[c] = base[c] + scale * sum_e value[e] * M[index[e], c] for c in cols, M row-major with
// leading dimension ld (out may be base; no base: 0). The sums run over the entries in order, in
// registers: blocks of 8 packets of columns, then one block for the rest (fewer packets, and
// the last columns that fill no packet), so each entry costs one load and one FMA per packet
// and the passes over the entries are as few as can be.
template <class T>
void combine_rows(const Index* index, const T* value, Index count, const T* M, Index ld, Range cols, T scale,
                  const T* base, T* out) {
  constexpr Index kLanes = Eigen::internal::packet_traits<T>::size;
  constexpr int kBlock = 8;
  Index c = cols.begin;
  for (; c + kBlock * kLanes <= cols.end; c += kBlock * kLanes)
    combine_block<kBlock, false>(index, value, count, M, ld, c, 0, scale, base, out);
  const int packets = static_cast<int>((cols.end - c) / kLanes);
  const Index tail = cols.end - c - packets * kLanes;
  if (tail > 0)
    combine_last_block<true>(std::make_integer_sequence<int, kBlock>{}, packets, index, value, count, M, ld, c, tail,
                             scale, base, out);
  else if (packets > 0)
    combine_last_block<false>(std::make_integer_sequence<int, kBlock>{}, packets, index, value, count, M, ld, c, 0,
                              scale, base, out);
}

}  // namespace detail

// D[:, cols] = x W_0[:, cols] + b_1[cols] for all B rows of x, given by its row lists; D (B x n_1)
// row-major. Column blocks outermost: the part of W_0 a block reads (n_0 x kBlock scalars)
// stays in cache while every example passes over it; example by example over all columns would
// stream W_0 from memory once per example. Each column takes the same operations in any column
// range that splits no packet (the team's split of W_0 by columns does not change the bits).
template <class T>
void sparse_input_drive(const Net<T>& net, const SparseRows<T>& x, Range cols, T* D) {
  const Index B = x.rows(), n1 = net.size(1);
  constexpr Index kBlock = 128;
  for (Index c = cols.begin; c < cols.end; c += kBlock) {
    const Range block{c, std::min(c + kBlock, cols.end)};
    for (Index i = 0; i < B; ++i)
      detail::combine_rows(x.indices(i), x.values(i), x.count(i), net.weights[0], n1, block, T(1), net.biases[0],
                           D + i * n1);
  }
}

// Columns `cols` of W_0 (n_0 x n_1): W_0[p, cols] += c sum_i x[i, p] d[i, cols] for every pixel
// p, with x given by its column lists and d (B x n_1) row-major. Pixels that no example
// touches are skipped: their update is exactly zero.
template <class T>
void sparse_input_update(const SparseRows<T>& x_columns, const T* d, Index n1, T c, Range cols, T* W0) {
  for (Index p = 0; p < x_columns.rows(); ++p) {
    const Index count = x_columns.count(p);
    if (count == 0) continue;
    T* row = W0 + p * n1;
    detail::combine_rows(x_columns.indices(p), x_columns.values(p), count, d, n1, cols, c, row, row);
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

// Rows `rows` of a thin layer's weights W (n x m, m <= kThinLayer, row-major):
//   W[j, :] += c sum_i (a[i, j] p[i, :] - b[i, j] q[i, :])
// with a, b (B x n) and p, q (B x m) row-major: the EP update of W_k (k >= 1) into a thin layer.
// Each entry is one chain over the examples in order, 16 (a packet of) rows at a time; a GEMM's
// blocking would depend on how many rows a thread holds. With `rows` split at whole packets
// (the rows past the last whole packet always scalar), the update does not depend on the
// thread count.
template <class T>
void thin_weight_update(const T* a, const T* p, const T* b, const T* q, Index B, Index n, Index m, T c, Range rows,
                        T* W) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<T>::type;
  constexpr Index kLanes = packet_traits<T>::size;
  Index j = rows.begin;
  for (; j + kLanes <= rows.end; j += kLanes) {
    Packet acc[kThinLayer];
    for (Index o = 0; o < m; ++o) acc[o] = pset1<Packet>(T(0));
    for (Index i = 0; i < B; ++i) {
      const Packet ai = ploadu<Packet>(a + i * n + j), bi = pnegate(ploadu<Packet>(b + i * n + j));
      for (Index o = 0; o < m; ++o) {
        acc[o] = pmadd(ai, pset1<Packet>(p[i * m + o]), acc[o]);
        acc[o] = pmadd(bi, pset1<Packet>(q[i * m + o]), acc[o]);
      }
    }
    alignas(64) T sums[kLanes];
    for (Index o = 0; o < m; ++o) {
      pstoreu(sums, pmul(pset1<Packet>(c), acc[o]));
      for (Index l = 0; l < kLanes; ++l) W[(j + l) * m + o] += sums[l];
    }
  }
  for (; j < rows.end; ++j) {  // the last rows, fewer than a packet
    T acc[kThinLayer] = {};
    for (Index i = 0; i < B; ++i)
      for (Index o = 0; o < m; ++o) {
        acc[o] += a[i * n + j] * p[i * m + o];
        acc[o] -= b[i * n + j] * q[i * m + o];
      }
    for (Index o = 0; o < m; ++o) W[j * m + o] += c * acc[o];
  }
}

}  // namespace eqcore
