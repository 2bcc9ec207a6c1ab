// Loss-distribution regulariser of A-AMU (fastblend.quantile_mmd), CPU kernels.
//
// Per set of M samples with logits z[M,C] and labels y[M] (SPEC §2.2):
//   lse_i = logsumexp(z_i),  l_i = lse_i - z_{i,y_i},  u_i = log1p(l_i + 1e-8)
//   q_i   = 1 - c_i = (1/M) sum_j t(u_i - u_j),  t(d) = 1 - sigmoid(k max(0, d))
//         = r/(1+r) with r = exp(-k d) for d > 0, and 1/2 for d <= 0.
// The tail q (not c) is accumulated, so the probit -ndtri(q) (taken in float64 by the caller) is
// accurate where c is close to 1. Backward, with dc = dL/dc and s'(d) = k r/(1+r)^2 for d > 0 (0 at
// d <= 0: the subgradient of max(0, .) at 0 is 0, as in PyTorch's relu):
//   du_m = (1/M) [ dc_m sum_{j: u_j < u_m} s'(u_m - u_j) - sum_{i: u_i > u_m} dc_i s'(u_i - u_m) ]
//   dz_m = du_m exp(-u_m) (softmax(z_m) - onehot(y_m))
// MMD^2 over the concatenation G = [g_u; g_f] with weights w = [+1/M_u; -1/M_f] (SPEC §2.3):
//   MMD^2 = sum_ab w_a w_b (kappa(G_a, G_b) - 1)          (sum_a w_a = 0 removes the ones)
//   dG_a  = -(2 w_a / s^2) sum_b w_b (G_a - G_b) kappa(G_a, G_b)
// kappa - 1 is evaluated as expm1 (no cancellation when G_a is close to G_b) and every sum is
// accumulated in double. Pairwise terms are evaluated in float for 16/32-bit inputs and in double
// for double inputs; nothing of size M x M is ever stored. Each output element is written by one
// thread in a fixed order, so results do not depend on scheduling.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"

// The pair loops select between precomputed values; GCC if-converts (and so vectorises) such
// selects only when floating-point comparisons may not trap. Nothing here reads FP exception flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace py = pybind11;

namespace fastblend {
namespace {

// exp(x) and expm1(x) for x <= 0 without library calls, so that loops over pairs vectorise.
// Range reduction x = n ln2 + r, |r| <= ln2/2, then a Taylor polynomial for expm1(r)
// (degree 8 in float, 14 in double: truncation below half an ulp).
template <typename T>
struct NegExp;

template <>
struct NegExp<float> {
  static constexpr float kLow = -87.0f;  // 2^n stays a normal float
  static inline float scale(int n) {
    const int32_t bits = (n + 127) << 23;
    float s;
    std::memcpy(&s, &bits, sizeof(s));
    return s;
  }
  static inline float poly(float r) {  // expm1(r) for |r| <= 0.35
    float p = 1.0f / 40320;
    p = p * r + 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    return (p * r + 1.0f) * r;
  }
};

template <>
struct NegExp<double> {
  static constexpr double kLow = -708.0;
  static inline double scale(int n) {
    const int64_t bits = (int64_t)(n + 1023) << 52;
    double s;
    std::memcpy(&s, &bits, sizeof(s));
    return s;
  }
  static inline double poly(double r) {
    double p = 1.0 / 87178291200.0;  // 1/14!
    p = p * r + 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    return (p * r + 1.0) * r;
  }
};

// Returns expm1(x) for x <= 0; exp(x) = result + 1 (accurate to an ulp of 1 only).
template <typename T>
inline T expm1_neg(T x) {
  constexpr T kLog2e = T(1.4426950408889634);
  constexpr T kLn2Hi = T(0.693145751953125);  // few mantissa bits: n * kLn2Hi is exact
  constexpr T kLn2Lo = T(1.4286068203094173e-06);
  const T lo = NegExp<T>::kLow;
  x = x < lo ? lo : x;
  const int n = (int)(x * kLog2e - T(0.5));  // truncation of a non-positive value: round to nearest
  const T r = (x - T(n) * kLn2Hi) - T(n) * kLn2Lo;
  const T s = NegExp<T>::scale(n);
  return s * NegExp<T>::poly(r) + (s - T(1));
}

template <typename T>
inline T exp_neg(T x) {
  return expm1_neg<T>(x) + T(1);
}

// sum_{j in [begin, end)} f(j) in double. Blocks of kBlock terms are first evaluated in T into a
// buffer (an elementwise loop, which the compiler vectorises: a floating-point reduction would
// need reassociation), then summed on independent lanes and added to a double accumulator, so
// rounding does not grow with the row length.
template <typename T, typename F>
inline double lane_sum(int64_t begin, int64_t end, F&& f) {
  constexpr int64_t kBlock = 256;
  constexpr int kLanes = 8;
  T buf[kBlock];
  double total = 0;
  for (int64_t s = begin; s < end; s += kBlock) {
    const int64_t len = std::min(end - s, kBlock);
    for (int64_t j = 0; j < len; ++j) buf[j] = f(s + j);
    for (int64_t j = len; j < kBlock; ++j) buf[j] = T(0);
    T lanes[kLanes] = {};
    for (int64_t j = 0; j < kBlock; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += buf[j + l];
    double part = 0;
    for (int l = 0; l < kLanes; ++l) part += (double)lanes[l];
    total += part;
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Per-sample cross-entropy and u = log1p(l + 1e-8), in double.
template <typename scalar_t>
void cross_entropy_rows(const scalar_t* z, const int64_t* y, int64_t M, int64_t C, double* lse,
                        double* u, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t i = 0; i < M; ++i) {
    const scalar_t* row = z + i * C;
    double mx = -INFINITY;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, (double)Scalar<scalar_t>::load(row + c));
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp((double)Scalar<scalar_t>::load(row + c) - mx);
    lse[i] = mx + std::log(s);
    const double loss = lse[i] - (double)Scalar<scalar_t>::load(row + y[i]);
    u[i] = std::log1p(loss + 1e-8);
  }
}

// Per-set tables for r = exp(-k |u_a - u_b|): a product E_b / E_a of per-sample exponentials when
// k * (max u - min u) is small enough for them to be finite (no exp per pair), else exp per pair.
template <typename T>
struct PairTable {
  std::vector<T> uu, e, inv_e;
  bool product = false;
  T k;

  PairTable(const double* u, int64_t M, double kd) : uu(M), k(T(kd)) {
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < M; ++i) {
      lo = std::min(lo, u[i]);
      hi = std::max(hi, u[i]);
      uu[i] = T(u[i]);
    }
    const double limit = sizeof(T) == 4 ? 80.0 : 700.0;
    product = M > 0 && kd * (hi - lo) <= limit;
    if (product) {
      e.resize(M);
      inv_e.resize(M);
      for (int64_t i = 0; i < M; ++i) {
        e[i] = T(std::exp(kd * (u[i] - lo)));
        inv_e[i] = T(std::exp(-kd * (u[i] - lo)));
      }
    }
  }
};

template <typename T>
void cdf_tail_rows(const PairTable<T>& tab, int64_t M, double* q, int nthreads) {
  const T* uu = tab.uu.data();
  const T k = tab.k;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
  for (int64_t i = 0; i < M; ++i) {
    const T ui = uu[i];
    double acc;
    if (tab.product) {
      const T* e = tab.e.data();
      const T inv_ei = tab.inv_e[i];
      acc = lane_sum<T>(0, M, [&](int64_t j) {
        const T r = e[j] * inv_ei;  // exp(-k (u_i - u_j)), < 1 exactly when u_j < u_i
        const T t = r / (T(1) + r);  // evaluated on every lane: a plain select vectorises
        return uu[j] < ui ? t : T(0.5);
      });
    } else {
      acc = lane_sum<T>(0, M, [&](int64_t j) {
        const T d = ui - uu[j];
        const T r = exp_neg<T>(-k * (d > T(0) ? d : T(0)));
        const T t = r / (T(1) + r);
        return d > 0 ? t : T(0.5);
      });
    }
    q[i] = acc / (double)M;
  }
}

template <typename T>
void cdf_backward_rows(const PairTable<T>& tab, const double* dc, int64_t M, double* du,
                       int nthreads) {
  const T* uu = tab.uu.data();
  const T k = tab.k;
  std::vector<T> dct(M);
  for (int64_t i = 0; i < M; ++i) dct[i] = T(dc[i]);
  const T* dcv = dct.data();
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
  for (int64_t m = 0; m < M; ++m) {
    const T um = uu[m];
    // a: sum over smaller u of s'; b: sum over larger u of dc * s'
    double a, b;
    if (tab.product) {
      const T* e = tab.e.data();
      const T* inv_e = tab.inv_e.data();
      const T em = e[m], inv_em = inv_e[m];
      a = lane_sum<T>(0, M, [&](int64_t j) {
        const T r = e[j] * inv_em;
        const T sp = k * r / ((T(1) + r) * (T(1) + r));
        return uu[j] < um ? sp : T(0);
      });
      b = lane_sum<T>(0, M, [&](int64_t j) {
        const T r = em * inv_e[j];
        const T sp = dcv[j] * k * r / ((T(1) + r) * (T(1) + r));
        return uu[j] > um ? sp : T(0);
      });
    } else {
      a = lane_sum<T>(0, M, [&](int64_t j) {
        const T d = um - uu[j];
        const T r = exp_neg<T>(-k * (d > T(0) ? d : T(0)));
        const T sp = k * r / ((T(1) + r) * (T(1) + r));
        return d > 0 ? sp : T(0);
      });
      b = lane_sum<T>(0, M, [&](int64_t j) {
        const T d = uu[j] - um;
        const T r = exp_neg<T>(-k * (d > T(0) ? d : T(0)));
        const T sp = dcv[j] * k * r / ((T(1) + r) * (T(1) + r));
        return d > 0 ? sp : T(0);
      });
    }
    du[m] = (dc[m] * a - b) / (double)M;
  }
}

template <typename scalar_t>
void cross_entropy_backward_rows(const scalar_t* z, const int64_t* y, int64_t M, int64_t C,
                                 const double* lse, const double* u, const double* du,
                                 scalar_t* dz, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t i = 0; i < M; ++i) {
    const double dl = du[i] * std::exp(-u[i]);  // du/dl = 1 / (1 + l + 1e-8) = exp(-u)
    const scalar_t* row = z + i * C;
    scalar_t* out = dz + i * C;
    for (int64_t c = 0; c < C; ++c) {
      const double p = std::exp((double)Scalar<scalar_t>::load(row + c) - lse[i]);
      Scalar<scalar_t>::store(out + c, (typename Scalar<scalar_t>::acc_t)(dl * (p - (c == y[i]))));
    }
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T>
double mmd_value(const double* g, const double* w, int64_t N, double sigma, int nthreads) {
  std::vector<T> gt(N), wt(N);
  for (int64_t a = 0; a < N; ++a) {
    gt[a] = T(g[a]);
    wt[a] = T(w[a]);
  }
  const T scale = T(-0.5 / (sigma * sigma));
  std::vector<double> rows(N, 0.0);
  // symmetric: row a sums b > a only; the diagonal term kappa - 1 is 0
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
  for (int64_t a = 0; a < N; ++a) {
    const T ga = gt[a];
    const double acc = lane_sum<T>(a + 1, N, [&](int64_t b) {
      const T d = ga - gt[b];
      return wt[b] * expm1_neg<T>(scale * d * d);
    });
    rows[a] = w[a] * acc;
  }
  double total = 0;
  for (int64_t a = 0; a < N; ++a) total += rows[a];
  return 2.0 * total;
}

template <typename T>
void mmd_backward_rows(const double* g, const double* w, int64_t N, double sigma, double* dg,
                       int nthreads) {
  std::vector<T> gt(N), wt(N);
  for (int64_t a = 0; a < N; ++a) {
    gt[a] = T(g[a]);
    wt[a] = T(w[a]);
  }
  const T scale = T(-0.5 / (sigma * sigma));
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t a = 0; a < N; ++a) {
    const T ga = gt[a];
    const double acc = lane_sum<T>(0, N, [&](int64_t b) {
      const T d = ga - gt[b];
      return wt[b] * d * exp_neg<T>(scale * d * d);
    });
    dg[a] = -2.0 * w[a] * acc / (sigma * sigma);
  }
}

// ---------------------------------------------------------------------------------------------
// O(M) bounds check run on every call, validate=False included: a label outside [0, C) would read
// outside its logits row. Raises ValueError in Python (pybind11 translates std::invalid_argument).
void check_labels(const char* fn, const int64_t* y, int64_t M, int64_t C) {
  if (M < 0 || C <= 0) throw std::invalid_argument(std::string(fn) + ": bad logits shape");
  for (int64_t i = 0; i < M; ++i) {
    if (y[i] < 0 || y[i] >= C)
      throw std::invalid_argument(std::string(fn) + ": labels must be in [0, " + std::to_string(C) +
                                  "), got " + std::to_string(y[i]) + " at position " +
                                  std::to_string(i));
  }
}

void set_forward(uintptr_t z, int dtype, uintptr_t y, int64_t M, int64_t C, double k,
                 uintptr_t stats, int nthreads) {
  check_labels("quantile_mmd", as_ptr<const int64_t>(y), M, C);
  double* lse = as_ptr<double>(stats);
  double* u = lse + M;
  double* q = u + M;
  FASTBLEND_DISPATCH_FLOAT(dtype, "quantile_set_forward", [&] {
    cross_entropy_rows<scalar_t>(as_ptr<const scalar_t>(z), as_ptr<const int64_t>(y), M, C, lse, u,
                                 nthreads);
  });
  if (dtype == kFloat64) {
    cdf_tail_rows<double>(PairTable<double>(u, M, k), M, q, nthreads);
  } else {
    cdf_tail_rows<float>(PairTable<float>(u, M, k), M, q, nthreads);
  }
}

void set_backward(uintptr_t z, int dtype, uintptr_t y, int64_t M, int64_t C, double k,
                  uintptr_t stats, uintptr_t dc, uintptr_t dz, int nthreads) {
  check_labels("quantile_mmd", as_ptr<const int64_t>(y), M, C);
  const double* lse = as_ptr<const double>(stats);
  const double* u = lse + M;
  std::vector<double> du(M);
  if (dtype == kFloat64) {
    cdf_backward_rows<double>(PairTable<double>(u, M, k), as_ptr<const double>(dc), M, du.data(),
                              nthreads);
  } else {
    cdf_backward_rows<float>(PairTable<float>(u, M, k), as_ptr<const double>(dc), M, du.data(),
                             nthreads);
  }
  FASTBLEND_DISPATCH_FLOAT(dtype, "quantile_set_backward", [&] {
    cross_entropy_backward_rows<scalar_t>(as_ptr<const scalar_t>(z), as_ptr<const int64_t>(y), M,
                                          C, lse, u, du.data(), as_ptr<scalar_t>(dz), nthreads);
  });
}

double mmd_forward(uintptr_t g, uintptr_t w, int64_t N, double sigma, bool single, int nthreads) {
  if (single) return mmd_value<float>(as_ptr<const double>(g), as_ptr<const double>(w), N, sigma, nthreads);
  return mmd_value<double>(as_ptr<const double>(g), as_ptr<const double>(w), N, sigma, nthreads);
}

void mmd_backward(uintptr_t g, uintptr_t w, int64_t N, double sigma, bool single, uintptr_t dg,
                  int nthreads) {
  if (single) {
    mmd_backward_rows<float>(as_ptr<const double>(g), as_ptr<const double>(w), N, sigma,
                             as_ptr<double>(dg), nthreads);
  } else {
    mmd_backward_rows<double>(as_ptr<const double>(g), as_ptr<const double>(w), N, sigma,
                              as_ptr<double>(dg), nthreads);
  }
}

}  // namespace

void init_quantile_mmd(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("quantile_set_forward", &set_forward, nogil,
        "stats[3,M] float64 (lse, u, tail q = 1 - c) from logits z[M,C] and labels y[M] (raw pointers)",
        py::arg("z"), py::arg("dtype"), py::arg("y"), py::arg("M"), py::arg("C"), py::arg("k"),
        py::arg("stats"), py::arg("nthreads"));
  m.def("quantile_set_backward", &set_backward, nogil,
        "dz[M,C] from dc[M] = dL/dc (float64) and the forward's stats (raw pointers)", py::arg("z"),
        py::arg("dtype"), py::arg("y"), py::arg("M"), py::arg("C"), py::arg("k"), py::arg("stats"),
        py::arg("dc"), py::arg("dz"), py::arg("nthreads"));
  m.def("quantile_mmd_forward", &mmd_forward, nogil,
        "sum_ab w_a w_b expm1(-(g_a - g_b)^2 / (2 sigma^2)) over g[N], w[N] float64 (raw pointers)",
        py::arg("g"), py::arg("w"), py::arg("N"), py::arg("sigma"), py::arg("single"),
        py::arg("nthreads"));
  m.def("quantile_mmd_backward", &mmd_backward, nogil,
        "dg[N] float64 = d(MMD^2)/dg (raw pointers)", py::arg("g"), py::arg("w"), py::arg("N"),
        py::arg("sigma"), py::arg("single"), py::arg("dg"), py::arg("nthreads"));
}

}  // namespace fastblend
