// Segmented weighted blend over a CSR layout (fastblend.segment_blend), CPU kernels.
//
//   what = normalise(w) within each segment      (none | w / sum | softmax)
//   out[k] = sum_{i in segment k} what[i] * x[i]
//
// Backward, with G = dL/dout and d[i] = <G[seg(i)], x[i]>, t_k = sum_{j in k} what[j] d[j]:
//   dx[i] = what[i] * G[seg(i)]
//   dw[i] = d[i] (none) | (d[i] - t_k) / S_k (sum) | what[i] (d[i] - t_k) (softmax)
// A segment whose weights sum to exactly zero gives zeros (output and gradients) under "sum".
// Every output element is written by one thread in a fixed order: results are deterministic.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace fastblend {
namespace {

enum Normalize : int { kNone = 0, kSum = 1, kSoftmax = 2 };
constexpr int64_t kChunk = 512;  // feature columns per forward work item

template <typename acc_t>
void normalize_weights(const acc_t* w, const int64_t* indptr, int64_t K, int mode, acc_t* what,
                       int nthreads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t s = indptr[k], e = indptr[k + 1];
    if (mode == kNone) {
      for (int64_t i = s; i < e; ++i) what[i] = w[i];
    } else if (mode == kSum) {
      acc_t S = 0;
      for (int64_t i = s; i < e; ++i) S += w[i];
      for (int64_t i = s; i < e; ++i) what[i] = (S == 0) ? acc_t(0) : w[i] / S;
    } else {
      acc_t m = -INFINITY;
      for (int64_t i = s; i < e; ++i) m = std::max(m, w[i]);
      acc_t Z = 0;
      for (int64_t i = s; i < e; ++i) Z += std::exp(w[i] - m);
      for (int64_t i = s; i < e; ++i) what[i] = std::exp(w[i] - m) / Z;
    }
  }
}

template <typename scalar_t>
void forward_impl(const scalar_t* x, const typename Scalar<scalar_t>::acc_t* w,
                  const int64_t* indptr, int64_t N, int64_t K, int64_t F, int mode, scalar_t* out,
                  typename Scalar<scalar_t>::acc_t* what, int nthreads) {
  using acc_t = typename Scalar<scalar_t>::acc_t;
  normalize_weights<acc_t>(w, indptr, K, mode, what, nthreads);
  const int64_t nchunks = (F + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads)
  for (int64_t t = 0; t < K * nchunks; ++t) {
    const int64_t k = t / nchunks;
    const int64_t f0 = (t % nchunks) * kChunk;
    const int64_t len = std::min(F, f0 + kChunk) - f0;
    acc_t acc[kChunk];
    for (int64_t f = 0; f < len; ++f) acc[f] = 0;
    for (int64_t i = indptr[k]; i < indptr[k + 1]; ++i) {
      const acc_t a = what[i];
      const scalar_t* row = x + i * F + f0;
      for (int64_t f = 0; f < len; ++f) acc[f] += a * Scalar<scalar_t>::load(row + f);
    }
    scalar_t* dst = out + k * F + f0;
    for (int64_t f = 0; f < len; ++f) Scalar<scalar_t>::store(dst + f, acc[f]);
  }
}

template <typename scalar_t>
inline typename Scalar<scalar_t>::acc_t row_dot(const scalar_t* a, const scalar_t* b, int64_t F) {
  using acc_t = typename Scalar<scalar_t>::acc_t;
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent partial sums let the compiler vectorise
  int64_t f = 0;
  for (; f + 8 <= F; f += 8)
    for (int j = 0; j < 8; ++j)
      lanes[j] += Scalar<scalar_t>::load(a + f + j) * Scalar<scalar_t>::load(b + f + j);
  acc_t tail = 0;
  for (; f < F; ++f) tail += Scalar<scalar_t>::load(a + f) * Scalar<scalar_t>::load(b + f);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + tail;
}

template <typename scalar_t>
void backward_impl(const scalar_t* grad, const scalar_t* x, const typename Scalar<scalar_t>::acc_t* w,
                   const int64_t* indptr, int64_t N, int64_t K, int64_t F, int mode, scalar_t* dx,
                   typename Scalar<scalar_t>::acc_t* dw, int nthreads) {
  using acc_t = typename Scalar<scalar_t>::acc_t;
  std::vector<acc_t> what(N), d(N);
  std::vector<int64_t> seg(N);
  normalize_weights<acc_t>(w, indptr, K, mode, what.data(), nthreads);
#pragma omp parallel for schedule(dynamic, 256) num_threads(nthreads)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = indptr[k]; i < indptr[k + 1]; ++i) seg[i] = k;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t i = 0; i < N; ++i) {
    const scalar_t* g = grad + seg[i] * F;
    const scalar_t* xr = x + i * F;
    if (dw != nullptr) d[i] = row_dot<scalar_t>(g, xr, F);
    if (dx != nullptr) {
      const acc_t a = what[i];
      scalar_t* dst = dx + i * F;
      for (int64_t f = 0; f < F; ++f) Scalar<scalar_t>::store(dst + f, a * Scalar<scalar_t>::load(g + f));
    }
  }
  if (dw == nullptr) return;
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t s = indptr[k], e = indptr[k + 1];
    if (mode == kNone) {
      for (int64_t i = s; i < e; ++i) dw[i] = d[i];
      continue;
    }
    acc_t t = 0;
    for (int64_t i = s; i < e; ++i) t += what[i] * d[i];
    if (mode == kSum) {
      acc_t S = 0;
      for (int64_t i = s; i < e; ++i) S += w[i];
      for (int64_t i = s; i < e; ++i) dw[i] = (S == 0) ? acc_t(0) : (d[i] - t) / S;
    } else {
      for (int64_t i = s; i < e; ++i) dw[i] = what[i] * (d[i] - t);
    }
  }
}

void check_mode(int mode) {
  if (mode < kNone || mode > kSoftmax) throw std::invalid_argument("segment_blend: bad normalize code");
}

// O(K) bounds check run on every call, validate=False included: the kernels index x, w and their
// outputs through indptr, so an offset outside [0, N] or a decreasing pair would read or write out
// of bounds. Raises ValueError in Python (pybind11 translates std::invalid_argument).
void check_layout(const int64_t* indptr, int64_t N, int64_t K, int64_t F) {
  if (N < 0 || K < 0 || F < 0) throw std::invalid_argument("segment_blend: negative size");
  if (indptr[0] != 0)
    throw std::invalid_argument("segment_blend: indptr must start at 0, got indptr[0] = " +
                                std::to_string(indptr[0]));
  if (indptr[K] != N)
    throw std::invalid_argument("segment_blend: indptr must end at N = " + std::to_string(N) +
                                " (rows of x), got indptr[-1] = " + std::to_string(indptr[K]));
  for (int64_t k = 0; k < K; ++k) {
    if (indptr[k + 1] < indptr[k])
      throw std::invalid_argument("segment_blend: indptr must be non-decreasing; indptr[" +
                                  std::to_string(k + 1) + "] = " + std::to_string(indptr[k + 1]) +
                                  " < indptr[" + std::to_string(k) + "] = " + std::to_string(indptr[k]));
  }
}

void forward(uintptr_t x, int dtype, uintptr_t w, uintptr_t indptr, int64_t N, int64_t K, int64_t F,
             int mode, uintptr_t out, uintptr_t what, int nthreads) {
  check_mode(mode);
  check_layout(as_ptr<const int64_t>(indptr), N, K, F);
  FASTBLEND_DISPATCH_FLOAT(dtype, "segment_blend_forward", [&] {
    using acc_t = typename Scalar<scalar_t>::acc_t;
    forward_impl<scalar_t>(as_ptr<const scalar_t>(x), as_ptr<const acc_t>(w),
                           as_ptr<const int64_t>(indptr), N, K, F, mode, as_ptr<scalar_t>(out),
                           as_ptr<acc_t>(what), nthreads);
  });
}

void backward(uintptr_t grad, uintptr_t x, int dtype, uintptr_t w, uintptr_t indptr, int64_t N,
              int64_t K, int64_t F, int mode, uintptr_t dx, uintptr_t dw, int nthreads) {
  check_mode(mode);
  check_layout(as_ptr<const int64_t>(indptr), N, K, F);
  FASTBLEND_DISPATCH_FLOAT(dtype, "segment_blend_backward", [&] {
    using acc_t = typename Scalar<scalar_t>::acc_t;
    backward_impl<scalar_t>(as_ptr<const scalar_t>(grad), as_ptr<const scalar_t>(x),
                            as_ptr<const acc_t>(w), as_ptr<const int64_t>(indptr), N, K, F, mode,
                            as_ptr<scalar_t>(dx), as_ptr<acc_t>(dw), nthreads);
  });
}

}  // namespace

void init_segment_blend(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("segment_blend_forward", &forward, nogil,
        "out[K,F] and normalised weights what[N] from x[N,F], w[N], indptr[K+1] (raw pointers)",
        py::arg("x"), py::arg("dtype"), py::arg("w"), py::arg("indptr"), py::arg("N"), py::arg("K"),
        py::arg("F"), py::arg("mode"), py::arg("out"), py::arg("what"), py::arg("nthreads"));
  m.def("segment_blend_backward", &backward, nogil,
        "dx[N,F] (if dx != 0) and dw[N] (if dw != 0) from grad[K,F] (raw pointers)", py::arg("grad"),
        py::arg("x"), py::arg("dtype"), py::arg("w"), py::arg("indptr"), py::arg("N"), py::arg("K"),
        py::arg("F"), py::arg("mode"), py::arg("dx"), py::arg("dw"), py::arg("nthreads"));
}

}  // namespace fastblend
