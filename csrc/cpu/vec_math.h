#pragma once
// exp, expm1, tanh, softplus and sigmoid for float and double, and erf for float, written so that GCC vectorises a
// loop that calls them (always inlined, no branches: every special case is a select, integer work in the
// lanes' own width), for the baseline x86-64 ISA the wheel is built for and for the AVX2 and
// AVX-512 builds of csrc/cpu/bound_cpu.cpp's loops (target_clones). Nothing is contracted into
// fused multiply-adds (the baseline has none; bound_cpu.cpp is built with -ffp-contract=off),
// so every build and a scalar call (nwj_bound's loop) compute the same bits.
//
// exp(x) = 2^k p(r): k = round(x / ln 2), r = x - k ln 2 in two parts (Cody-Waite, the high
// part of ln 2 short enough that k ln2_hi is exact), |r| <= ln(2) / 2, p the Taylor polynomial
// of exp to degree 7 (float; truncation 5e-9 relative) or 13 (double; 4e-18), 2^k applied as
// 2^k1 2^k2 (k1 + k2 = k, each a normal power of 2) so that results near overflow and in the
// subnormal range round once. Above the largest x with a finite exp: +inf; below the smallest
// with a nonzero one: 0; NaN stays NaN. Error (tests/test_bound_vec_math.py asserts it): float
// within 1.2e-7 relative (about 1 ulp; normal results), double within 2.3e-16.
#include <cstdint>
#include <cstring>

// Always inlined: a call left in a loop stops its vectorisation.
#define INFOMAX_VEC_INLINE inline __attribute__((always_inline))

namespace infomax_ext {
namespace vec {

INFOMAX_VEC_INLINE float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
INFOMAX_VEC_INLINE uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
INFOMAX_VEC_INLINE double bits_double(uint64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}
INFOMAX_VEC_INLINE uint64_t double_bits(double d) {
  uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// 2^k for an integer-valued k of [-126, 127] given as float: adding 1.5 * 2^23 puts k in the low
// mantissa bits, so (bits + 127) << 23 are the bits of 2^k.
INFOMAX_VEC_INLINE float pow2_float(float k) {
  return bits_float((float_bits(k + 12582912.0f) + 127u) << 23);
}
// 2^k for an integer-valued k of [-1022, 1023] given as double (1.5 * 2^52 alike).
INFOMAX_VEC_INLINE double pow2_double(double k) {
  return bits_double((double_bits(k + 6755399441055744.0) + 1023u) << 52);
}

// k = round(x / ln 2) (the 1.5 * 2^23 or 2^52 trick: round to nearest even) and r = x - k ln 2
// in two parts (Cody-Waite: the high part of ln 2 short enough that k ln2_hi is exact), for the
// clamped argument of exp and expm1.
INFOMAX_VEC_INLINE void reduce_ln2(float x, float* k, float* r) {
  *k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  *r = (x - *k * 0.693145751953125f) - *k * 1.42860682030941723212e-6f;
}
INFOMAX_VEC_INLINE void reduce_ln2(double x, double* k, double* r) {
  *k = (x * 1.44269504088896338700 + 6755399441055744.0) - 6755399441055744.0;
  *r = (x - *k * 6.93147180369123816490e-01) - *k * 1.90821492927058770002e-10;
}

// v 2^k for an integer-valued k as 2^k1 2^k2 (k1 = round(k / 2), k1 + k2 = k, each a normal
// power of 2), so that results near overflow and in the subnormal range round once.
INFOMAX_VEC_INLINE float scale_pow2(float v, float k) {
  const float k1 = (k * 0.5f + 12582912.0f) - 12582912.0f;
  return v * pow2_float(k1) * pow2_float(k - k1);
}
INFOMAX_VEC_INLINE double scale_pow2(double v, double k) {
  const double k1 = (k * 0.5 + 6755399441055744.0) - 6755399441055744.0;
  return v * pow2_double(k1) * pow2_double(k - k1);
}

INFOMAX_VEC_INLINE float exp(float x) {
  // exp(88.72283172607421875f) is the largest finite float exp; below -104 every exp rounds to 0.
  constexpr float kMaxArg = 88.72283172607421875f, kMinArg = -104.0f;
  const float xc = x < kMinArg ? kMinArg : (x > 89.0f ? 89.0f : x);  // NaN stays NaN
  float k, r;
  reduce_ln2(xc, &k, &r);  // |k| <= 151
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r * r + r;  // r + r^2 (1/2 + ...): the small part first, then 1
  p = p + 1.0f;
  const float y = scale_pow2(p, k);  // |k1|, |k2| <= 76
  return x > kMaxArg ? __builtin_inff() : (x < kMinArg ? 0.0f : y);
}

INFOMAX_VEC_INLINE double exp(double x) {
  // exp(709.782712893383973096) is the largest finite double exp; below -746 every exp is 0.
  constexpr double kMaxArg = 709.782712893383973096, kMinArg = -746.0;
  const double xc = x < kMinArg ? kMinArg : (x > 710.0 ? 710.0 : x);
  double k, r;
  reduce_ln2(xc, &k, &r);
  double p = 1.0 / 6227020800.0;  // 1/13!
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
  p = p * r * r + r;
  p = p + 1.0;
  const double y = scale_pow2(p, k);  // |k1|, |k2| <= 539
  return x > kMaxArg ? __builtin_inf() : (x < kMinArg ? 0.0 : y);
}

// expm1(x) = exp(x) - 1 keeping x's relative precision near 0: k = round(x / ln 2), r = x - k ln 2
// as in exp (r = x exactly when |x| < ln(2) / 2, k = 0), expm1(r) = r + r^2 (1/2 + r/6 + ...)
// the Taylor polynomial to r^9 (float; truncation below 1e-10 relative) or r^16 (double; below
// 1e-20), then
// 2^k expm1(r) + (2^k - 1) for k <= 24 (float) or 53 (double), where 2^k - 1 is exact, and
// (expm1(r) + 1) 2^k1 2^k2 - 1 above (k1 + k2 = k, as in exp). Above the largest x with a finite exp:
// +inf; -1 below -17.5 (float) or -40 (double), where expm1 rounds to -1; NaN stays NaN.
// Error (tests/test_activation_vec_math.py asserts it): float within 2 ulp, double within 2 ulp.
INFOMAX_VEC_INLINE float expm1(float x) {
  constexpr float kMaxArg = 88.72283172607421875f, kMinArg = -17.5f;
  const float xc = x < kMinArg ? kMinArg : (x > 89.0f ? 89.0f : x);  // NaN stays NaN
  float k, r;
  reduce_ln2(xc, &k, &r);
  float p = 1.0f / 362880;
  p = p * r + 1.0f / 40320;
  p = p * r + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  const float em = p * r * r + r;
  const float s = pow2_float(k > 24.0f ? 24.0f : k);
  const float big = scale_pow2(em + 1.0f, k) - 1.0f;  // k up to 128
  const float y = k > 24.0f ? big : s * em + (s - 1.0f);
  return x > kMaxArg ? __builtin_inff() : (x < kMinArg ? -1.0f : y);
}

INFOMAX_VEC_INLINE double expm1(double x) {
  constexpr double kMaxArg = 709.782712893383973096, kMinArg = -40.0;
  const double xc = x < kMinArg ? kMinArg : (x > 710.0 ? 710.0 : x);
  double k, r;
  reduce_ln2(xc, &k, &r);
  double p = 1.0 / 20922789888000.0;  // 1/16!
  p = p * r + 1.0 / 1307674368000.0;
  p = p * r + 1.0 / 87178291200.0;
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
  const double em = p * r * r + r;
  const double s = pow2_double(k > 53.0 ? 53.0 : k);
  const double big = scale_pow2(em + 1.0, k) - 1.0;  // k up to 1024
  const double y = k > 53.0 ? big : s * em + (s - 1.0);
  return x > kMaxArg ? __builtin_inf() : (x < kMinArg ? -1.0 : y);
}

// tanh(x) = t / (t + 2), t = expm1(2 |x|), with x's sign (bit copy: tanh(-0) = -0): near 0 the
// relative precision of expm1; |x| clamped to 10 (float) or 20 (double), where tanh rounds to
// 1, so t stays finite. NaN stays NaN. Error (tests/test_activation_vec_math.py): float and
// double within 3 ulp.
INFOMAX_VEC_INLINE float tanh(float x) {
  const float a = bits_float(float_bits(x) & 0x7fffffffu);
  const float t = expm1(2.0f * (a > 10.0f ? 10.0f : a));  // NaN stays NaN
  return bits_float(float_bits(t / (t + 2.0f)) | (float_bits(x) & 0x80000000u));
}
INFOMAX_VEC_INLINE double tanh(double x) {
  const double a = bits_double(double_bits(x) & 0x7fffffffffffffffull);
  const double t = expm1(2.0 * (a > 20.0 ? 20.0 : a));
  return bits_double(double_bits(t / (t + 2.0)) | (double_bits(x) & 0x8000000000000000ull));
}

// erf(x) for float: |x| <= 1: the Taylor series x (2 / sqrt(pi)) sum (-x^2)^n / (n! (2n + 1)) to
// n = 11 (truncation 1e-9); 1 < |x| < 4: 1 - exp(-x^2) erfcx(|x|), erfcx(x) = exp(x^2) erfc(x)
// by a degree-11 polynomial in u = (2x - 5) / 3 (a Chebyshev least-squares fit on [1, 4],
// within 1.9e-7 relative evaluated in float), exp(-x^2) as exp(-h^2) exp(-(x - h)(x + h)) with h
// the leading 12 bits of x (h^2 exact); 1 from 4 on (erfc(4) < 2^-25); x's sign copied. NaN
// stays NaN. Error (tests/test_activation_vec_math.py): within 2 float eps absolute, and 2 ulp
// relative below 1. double keeps libm's erf (csrc/activations.h).
INFOMAX_VEC_INLINE float erf(float x) {
  const float a = bits_float(float_bits(x) & 0x7fffffffu);
  const float as = a > 1.0f ? 1.0f : a;  // the series' argument; NaN stays NaN
  const float s2 = as * as;
  float ps = -1.229055530e-09f;
  ps = ps * s2 + 1.480719282e-08f;
  ps = ps * s2 - 1.636584469e-07f;
  ps = ps * s2 + 1.646211437e-06f;
  ps = ps * s2 - 1.492565036e-05f;
  ps = ps * s2 + 1.205533298e-04f;
  ps = ps * s2 - 8.548327023e-04f;
  ps = ps * s2 + 5.223977625e-03f;
  ps = ps * s2 - 2.686617065e-02f;
  ps = ps * s2 + 1.128379167e-01f;
  ps = ps * s2 - 3.761263890e-01f;
  ps = ps * s2 + 1.128379167e+00f;
  const float small = as * ps;
  const float al = a < 1.0f ? 1.0f : (a > 4.0f ? 4.0f : a);
  const float u = al * (2.0f / 3.0f) - (5.0f / 3.0f);
  float q = -3.692872358e-05f;
  q = q * u + 9.640451524e-05f;
  q = q * u - 1.439485979e-04f;
  q = q * u + 3.678686724e-04f;
  q = q * u - 1.017117774e-03f;
  q = q * u + 2.425885101e-03f;
  q = q * u - 5.567332910e-03f;
  q = q * u + 1.248403569e-02f;
  q = q * u - 2.700572529e-02f;
  q = q * u + 5.611095841e-02f;
  q = q * u - 1.115210047e-01f;
  q = q * u + 2.108063575e-01f;
  const float h = bits_float(float_bits(al) & 0xfffff000u);
  const float e = exp(-(h * h)) * exp(-((al - h) * (al + h)));
  const float large = 1.0f - e * q;
  const float y = a <= 1.0f ? small : (a >= 4.0f ? 1.0f : large);
  return bits_float(float_bits(y) | (float_bits(x) & 0x80000000u));
}

// log1p(u) for u in [0, 1]: 2 atanh(f), f = u / (2 + u) in [0, 1/3] (exact: (1 + u) = (1 + f) /
// (1 - f)), the odd series of atanh to f^15 (float; truncation 1e-9 relative) or f^33 (double;
// 5e-18). One division; small u keep their relative precision.
INFOMAX_VEC_INLINE float log1p_unit(float u) {
  const float f = u / (2.0f + u);
  const float f2 = f * f;
  float s = 1.0f / 15;
  s = s * f2 + 1.0f / 13;
  s = s * f2 + 1.0f / 11;
  s = s * f2 + 1.0f / 9;
  s = s * f2 + 1.0f / 7;
  s = s * f2 + 1.0f / 5;
  s = s * f2 + 1.0f / 3;
  return 2.0f * f + 2.0f * f * (f2 * s);
}
INFOMAX_VEC_INLINE double log1p_unit(double u) {
  const double f = u / (2.0 + u);
  const double f2 = f * f;
  double s = 1.0 / 33;
  for (int n = 31; n >= 3; n -= 2) s = s * f2 + 1.0 / n;  // unrolled: constant trip count
  return 2.0 * f + 2.0 * f * (f2 * s);
}

// log(v) for a positive, finite, normal v (the Bernoulli log-likelihood's clamped
// probabilities; other inputs are outside its domain): v = 2^k m with m in [sqrt(1/2), sqrt(2))
// read from the bits (the integer offset by the bits of sqrt(1/2): its exponent field is k),
// log(m) = 2 atanh(f), f = (m - 1) / (m + 1) in [-0.172, 0.172] (m - 1 exact), the odd series
// to f^9 (float; truncation 2e-9 relative) or f^23 (double; 4e-19), and k ln 2 in two parts
// (the high part short, so k ln2_hi is exact), the small parts added first. NaN stays NaN.
// Error (tests/test_bernoulli_op.py asserts it through the op): within 2 ulp on the domain.
INFOMAX_VEC_INLINE float log_positive(float v) {
  const int32_t ix = static_cast<int32_t>(float_bits(v) - 0x3f3504f3u);
  const float k = static_cast<float>(ix >> 23);  // arithmetic shift: the exponent, signed
  const float m = bits_float((static_cast<uint32_t>(ix) & 0x007fffffu) + 0x3f3504f3u);
  const float num = m - 1.0f;
  const float f = num / (m + 1.0f);
  const float f2 = f * f;
  float s = 1.0f / 9;
  s = s * f2 + 1.0f / 7;
  s = s * f2 + 1.0f / 5;
  s = s * f2 + 1.0f / 3;
  const float log_m = 2.0f * f + 2.0f * f * (f2 * s);
  const float y = k * 0.693145751953125f + (log_m + k * 1.42860682030941723212e-6f);
  return v != v ? v : y;
}
INFOMAX_VEC_INLINE double log_positive(double v) {
  const int64_t ix = static_cast<int64_t>(double_bits(v) - 0x3fe6a09e667f3bcdull);
  const double k = static_cast<double>(ix >> 52);
  const double m =
      bits_double((static_cast<uint64_t>(ix) & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull);
  const double num = m - 1.0;
  const double f = num / (m + 1.0);
  const double f2 = f * f;
  double s = 1.0 / 23;
  for (int n = 21; n >= 3; n -= 2) s = s * f2 + 1.0 / n;  // unrolled: constant trip count
  const double log_m = 2.0 * f + 2.0 * f * (f2 * s);
  const double y = k * 6.93147180369123816490e-01 + (log_m + k * 1.90821492927058770002e-10);
  return v != v ? v : y;
}

// log(1 - p) = log1p(-p) for p in (0, 1) (clamped probabilities), with p's relative precision
// kept for small p: u = 1 - p rounded, then log(u) (u - 1 is exact) scaled by -p / (u - 1),
// the factor that undoes the rounding of u (Goldberg 1991, theorem 4). u < 1 for every p of
// the clamp's range, so the factor is defined. NaN stays NaN.
template <typename T>
INFOMAX_VEC_INLINE T log1m(T p) {
  const T u = T(1) - p;
  return log_positive(u) * (-p / (u - T(1)));
}

// softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), x itself above 20 (torch's
// threshold); NaN stays NaN.
template <typename T>
INFOMAX_VEC_INLINE T softplus(T x) {
  const T a = x < T(0) ? -x : x;
  const T sp = (x > T(0) ? x : T(0)) + log1p_unit(exp(-a));
  return ((x > T(20)) | (x != x)) ? x : sp;
}

// softplus'(x) = sigmoid(x) = z / (z + 1), z = exp(x), 1 above 20 (torch's softplus backward,
// its formula: a loop that also takes exp(x) computes it once).
template <typename T>
INFOMAX_VEC_INLINE T softplus_grad(T x) {
  const T z = exp(x > T(20) ? T(20) : x);  // NaN stays NaN
  return x > T(20) ? T(1) : z / (z + T(1));
}

}  // namespace vec
}  // namespace infomax_ext
