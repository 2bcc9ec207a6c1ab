// Shared helpers for fastblend's CPU kernels: dtype codes, half/bfloat16 conversion and
// raw-pointer access. Tensors cross the boundary as (data_ptr, dtype code) pairs of
// contiguous buffers, so the extension needs pybind11 only, not torch headers.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastblend {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FFu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) {  // inf or nan
    return (uint16_t)(sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u : 0u));
  }
  if (absx >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // overflow -> inf
  if (absx < 0x38800000u) {                                     // subnormal or zero
    if (absx < 0x33000000u) return (uint16_t)sign;
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (112 - e) + 1 ... into 10-bit mantissa
    uint32_t hm = m >> (shift);
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (hm & 1u))) ++hm;
    return (uint16_t)(sign | hm);
  }
  uint32_t h = ((absx - 0x38000000u) >> 13);
  const uint32_t rem = absx & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}

inline float bf16_to_float(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, nan stays nan
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

// Scalar<T>::acc_t is the accumulation type: float for the 16/32-bit types, double for double
// (so float64 inputs are exact enough for gradcheck).
template <typename T>
struct Scalar;
template <>
struct Scalar<float> {
  using acc_t = float;
  static inline float load(const float* p) { return *p; }
  static inline void store(float* p, float v) { *p = v; }
};
template <>
struct Scalar<double> {
  using acc_t = double;
  static inline double load(const double* p) { return *p; }
  static inline void store(double* p, double v) { *p = v; }
};
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
template <>
struct Scalar<Half> {
  using acc_t = float;
  static inline float load(const Half* p) { return half_to_float(p->bits); }
  static inline void store(Half* p, float v) { p->bits = float_to_half(v); }
};
template <>
struct Scalar<BFloat16> {
  using acc_t = float;
  static inline float load(const BFloat16* p) { return bf16_to_float(p->bits); }
  static inline void store(BFloat16* p, float v) { p->bits = float_to_bf16(v); }
};

template <typename T>
inline T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Calls fn.template operator()<T>() with T the C++ type of the dtype code.
#define FASTBLEND_DISPATCH_FLOAT(code, NAME, ...)                         \
  [&] {                                                                   \
    switch (code) {                                                       \
      case ::fastblend::kFloat32: {                                       \
        using scalar_t = float;                                           \
        return __VA_ARGS__();                                             \
      }                                                                   \
      case ::fastblend::kFloat16: {                                       \
        using scalar_t = ::fastblend::Half;                               \
        return __VA_ARGS__();                                             \
      }                                                                   \
      case ::fastblend::kBFloat16: {                                      \
        using scalar_t = ::fastblend::BFloat16;                           \
        return __VA_ARGS__();                                             \
      }                                                                   \
      case ::fastblend::kFloat64: {                                       \
        using scalar_t = double;                                          \
        return __VA_ARGS__();                                             \
      }                                                                   \
      default:                                                            \
        throw std::invalid_argument(std::string(NAME) + ": unsupported dtype code " + \
                                    std::to_string(code));                \
    }                                                                     \
  }()

}  // namespace fastblend
