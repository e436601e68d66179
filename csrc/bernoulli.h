#pragma once
// The Bernoulli log-likelihood of the bernoulli_loglik op, per element, as both the CPU and the
// CUDA kernels compute it:
//   pc = clamp(p, eps, 1 - eps)   (eps = the dtype's machine epsilon; NaN stays NaN)
//   term(p, x)      = x log(pc) + (1 - x) log(1 - pc)
//   d term / d p    = (x - pc) / (pc (1 - pc)) inside [eps, 1 - eps] (ends included, as
//                     torch.clamp's gradient up to torch 2.13; 2.14 stops it at the ends), 0
//                     outside and at NaN
//   d term / d x    = log(pc) - log(1 - pc)
// The logs: the vectorisable ones of csrc/cpu/vec_math.h on the CPU, CUDA's log and log1p on
// the device.
#include <cmath>

#include "macros.h"
#if !defined(__CUDA_ARCH__)
#include "cpu/vec_math.h"
#endif

namespace infomax_ext {

// The clamp's eps: the dtype's machine epsilon (torch.finfo(dtype).eps).
template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_eps() {
  if constexpr (sizeof(T) == sizeof(float)) {
    return T(1.1920928955078125e-07f);  // 2^-23
  } else {
    return T(2.220446049250313080847e-16);  // 2^-52
  }
}

template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_clamp(T p) {
  const T lo = bernoulli_eps<T>(), hi = T(1) - bernoulli_eps<T>();
  return p < lo ? lo : (p > hi ? hi : p);
}

// Whether the clamp passes p unchanged (its ends included; false at NaN): where its gradient
// passes.
template <typename T>
INFOMAX_HOST_DEVICE bool bernoulli_inside(T p) {
  return (p >= bernoulli_eps<T>()) & (p <= T(1) - bernoulli_eps<T>());
}

// log(pc) and log(1 - pc) of a clamped probability.
template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_log_p(T pc) {
#if defined(__CUDA_ARCH__)
  return ::log(pc);
#else
  return vec::log_positive(pc);
#endif
}
template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_log_q(T pc) {
#if defined(__CUDA_ARCH__)
  return ::log1p(-pc);
#else
  return vec::log1m(pc);
#endif
}

template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_term(T p, T x) {
  const T pc = bernoulli_clamp(p);
  return x * bernoulli_log_p(pc) + (T(1) - x) * bernoulli_log_q(pc);
}

// g d term / d p.
template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_grad_p(T g, T p, T x) {
  const bool inside = bernoulli_inside(p);
  const T pc = inside ? p : T(0.5);  // any value with a finite quotient: the result is 0
  const T d = g * ((x - pc) / (pc * (T(1) - pc)));
  return inside ? d : T(0);
}

// d term / d x (the incoming gradient applied by the caller, which sums over the samples).
template <typename T>
INFOMAX_HOST_DEVICE T bernoulli_grad_x(T p) {
  const T pc = bernoulli_clamp(p);
  return bernoulli_log_p(pc) - bernoulli_log_q(pc);
}

}  // namespace infomax_ext
