// Vectors of floats as wide as one register of the instruction set built for, their loads and stores for both
// element types, and the vectorised GELU.
//
// GCC vector extensions: one vfloat is one AVX-512 register (16 floats), one AVX2 register (8) or one SSE/NEON
// register (4), from the same source. A vector wider than the target's registers would be legal C++, but GCC
// lowers arrays of them through memory, which made the whole kernel about 3x slower when built for AVX2.
// bfloat16 is widened to float32 on load and rounded once on store; all arithmetic is float32.
#pragma once

#include <c10/util/BFloat16.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace ultrafastbert::fff {

// The kernel's two element types: float32 and bfloat16 (see dispatch_dtype in kernel.h).
using bf16 = c10::BFloat16;

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;  // floats per vfloat: one AVX-512 register, one 64-byte cache line
constexpr int kVectorRegisters = 32;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;  // one AVX2 register
constexpr int kVectorRegisters = 16;
#else
constexpr int64_t kLanes = 4;  // one SSE or NEON register
constexpr int kVectorRegisters = 16;
#endif

typedef float vfloat __attribute__((vector_size(kLanes * 4)));
typedef float vfloat_u __attribute__((vector_size(kLanes * 4), aligned(4), may_alias));
typedef int32_t vint __attribute__((vector_size(kLanes * 4)));
typedef uint32_t vuint __attribute__((vector_size(kLanes * 4)));
typedef uint16_t vbf16 __attribute__((vector_size(kLanes * 2)));
typedef uint16_t vbf16_u __attribute__((vector_size(kLanes * 2), aligned(2), may_alias));

inline vfloat load(const float* p) { return *reinterpret_cast<const vfloat_u*>(p); }

inline vfloat load(const bf16* p) {
  // bfloat16 is the high half of a float32: widen to 32 bits and shift into place.
  const vuint wide = __builtin_convertvector(*reinterpret_cast<const vbf16_u*>(p), vuint) << 16;
  vfloat v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}

inline void store(float* p, vfloat v) { *reinterpret_cast<vfloat_u*>(p) = v; }

inline void store(bf16* p, vfloat v) {
  // round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN
  vuint bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vuint rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16;
  const vuint result = (v != v) ? vuint{} + 0x7FC0 : rounded;
  *reinterpret_cast<vbf16_u*>(p) = __builtin_convertvector(result, vbf16);
}

// Non-temporal store (p aligned to the vector's size): outputs written once go straight to memory, without
// first reading the line in and without evicting the weights from cache.
inline void store_stream(float* p, vfloat v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, reinterpret_cast<__m512&>(v));
#elif defined(__AVX__)
  _mm256_stream_ps(p, reinterpret_cast<__m256&>(v));
#else
  store(p, v);
#endif
}

// Orders streaming stores before anything that follows (the op's return, another thread's read).
inline void store_fence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

inline vfloat broadcast(float s) { return vfloat{} + s; }

// Sum of the lanes, always in the same tree order: halves folded onto each other down to four lanes.
inline float horizontal_sum(vfloat v) {
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof(v));
  for (int64_t half = kLanes / 2; half >= 4; half /= 2) {
    for (int64_t i = 0; i < half; ++i) lanes[i] += lanes[i + half];
  }
  return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
}

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return static_cast<float>(v); }

// ---- GELU -------------------------------------------------------------------------------------------------
//
// Exact (erf) GELU, vectorised with the erf approximation PyTorch's own CPU GELU uses (Abramowitz & Stegun
// 7.1.26, |error| < 1.5e-7), so the kernel and the reference agree to float32 rounding. It is applied to many
// logits at once (map_floats), so the polynomial chains of many vectors overlap.

inline vfloat exp_approx(vfloat x) {
  // 2**n * exp(r), |r| <= ln2/2: Cephes' degree-6 polynomial, about 1 ulp
  x = x < -87.0f ? vfloat{} - 87.0f : x;
  x = x > 88.0f ? vfloat{} + 88.0f : x;
  const vfloat shifter = broadcast(12582912.0f);  // 1.5 * 2**23: adding it rounds to an integer
  const vfloat n = (x * 1.44269504088896341f + shifter) - shifter;
  const vfloat r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  vfloat p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vint scale_bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return p * scale;
}

inline vfloat erf_approx(vfloat x) {
  const vfloat a = x < 0.0f ? -x : x;
  const vfloat t = 1.0f / (a * 0.3275911f + 1.0f);
  vfloat r = broadcast(1.061405429f);
  r = r * t - 1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t - 0.284496736f;
  r = r * t + 0.254829592f;
  const vfloat y = 1.0f - r * t * exp_approx(-(x * x));
  return x < 0.0f ? -y : y;
}

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

inline vfloat gelu(vfloat z) { return 0.5f * z * (1.0f + erf_approx(z * kInvSqrt2)); }

inline vfloat gelu_derivative(vfloat z) {
  return 0.5f * (1.0f + erf_approx(z * kInvSqrt2)) + z * exp_approx(-0.5f * z * z) * kInvSqrt2Pi;
}

// out[i] = op(in[i]) for `count` floats, a vector at a time (the tail through a padded copy).
template <typename Op>
inline void map_floats(const float* in, float* out, int64_t count, Op op) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) store(out + i, op(load(in + i)));
  if (i < count) {
    float padded[kLanes] = {};
    std::memcpy(padded, in + i, (count - i) * sizeof(float));
    const vfloat v = op(load(padded));
    std::memcpy(out + i, &v, (count - i) * sizeof(float));
  }
}

}  // namespace ultrafastbert::fff
