#pragma once
// The MI lower bounds the compiled reductions support (the mi_bound op, and the NWJ head of
// critic_head / critic_mlp): per element, what both the CPU and the CUDA kernels compute.
//
// With t_j the M joint scores and t_k the K scores on negatives, every bound here is
//   value     = mean_j t_j + offset - R,   R = mean_k n(t_k)              (reduction MeanOf)
//                                          R = log mean_k exp(n(t_k))     (reduction LogMeanExpOf)
//   objective = the value                                                 (objective Value)
//             = -mean_j softplus(-t_j) - mean_k softplus(t_k)             (objective JensenShannon)
// where n is the bound's negative term (bound_negative_term). The objective is what trains the
// critic (its gradient); the JS f-GAN bound of Poole et al. 2019 and Song & Ermon 2020.
//
// INFOMAX_BOUNDS is the one list: it generates the enum, the names the schemas take, the
// dispatch, the traits and the "supported: ..." message. Adding a bound is one line there plus
// its negative term and that term's derivative below (and its class in
// python/infomax_ext/bounds.py); the kernels need no change.
#include <cmath>
#include <string>
#include <type_traits>

#include "activations.h"
#include "macros.h"
#if !defined(__CUDA_ARCH__)
#include "cpu/vec_math.h"
#endif

namespace infomax_ext {

enum class BoundReduction : int { MeanOf, LogMeanExpOf };
enum class BoundObjective : int { Value, JensenShannon };

// X(name as the schemas spell it, enumerator, reduction, objective, offset, parameter): the
// parameter is the name of the op's `param` for the bound ("" when it takes none; a named one
// must be positive and finite): SMILE's clip tau, n(t) = clip(t, -tau, tau).
#define INFOMAX_BOUNDS(X)                                \
  X(nwj, Nwj, MeanOf, Value, 0, "")                      \
  X(dv, Dv, LogMeanExpOf, Value, 0, "")                  \
  X(js, Js, MeanOf, JensenShannon, 1, "")                \
  X(smile, Smile, LogMeanExpOf, JensenShannon, 0, "clip")

enum class MiBound : int {
#define INFOMAX_BOUND_ENUMERATOR(name, enumerator, reduction, objective, offset, param) enumerator,
  INFOMAX_BOUNDS(INFOMAX_BOUND_ENUMERATOR)
#undef INFOMAX_BOUND_ENUMERATOR
};

inline constexpr const char* kBoundNames[] = {
#define INFOMAX_BOUND_NAME(name, enumerator, reduction, objective, offset, param) #name,
    INFOMAX_BOUNDS(INFOMAX_BOUND_NAME)
#undef INFOMAX_BOUND_NAME
};
inline constexpr const char* kBoundParams[] = {
#define INFOMAX_BOUND_PARAM(name, enumerator, reduction, objective, offset, param) param,
    INFOMAX_BOUNDS(INFOMAX_BOUND_PARAM)
#undef INFOMAX_BOUND_PARAM
};
inline constexpr int kBoundCount = sizeof(kBoundNames) / sizeof(kBoundNames[0]);

template <MiBound B>
struct BoundTraits;
#define INFOMAX_BOUND_TRAITS(name, enumerator, reduction_, objective_, offset_, param)      \
  template <>                                                                              \
  struct BoundTraits<MiBound::enumerator> {                                                \
    static constexpr BoundReduction reduction = BoundReduction::reduction_;                \
    static constexpr BoundObjective objective = BoundObjective::objective_;                \
    static constexpr int offset = offset_;                                                 \
  };
INFOMAX_BOUNDS(INFOMAX_BOUND_TRAITS)
#undef INFOMAX_BOUND_TRAITS

// Parses the schema's bound name; returns false for an unknown name.
inline bool parse_bound(const std::string& name, MiBound* out) {
  for (int i = 0; i < kBoundCount; ++i) {
    if (name == kBoundNames[i]) {
      *out = static_cast<MiBound>(i);
      return true;
    }
  }
  return false;
}

// "nwj, dv, ...": the supported names, for error messages.
inline std::string supported_bounds() {
  std::string names;
  for (int i = 0; i < kBoundCount; ++i) names += (i ? ", " : "") + std::string(kBoundNames[i]);
  return names;
}

// The name of bound b's parameter, "" when it takes none.
inline std::string bound_param_name(MiBound b) { return kBoundParams[static_cast<int>(b)]; }

template <MiBound B>
using BoundTag = std::integral_constant<MiBound, B>;

// Calls f(BoundTag<B>{}) with the compile-time tag of the runtime value b.
template <typename F>
inline void dispatch_bound(MiBound b, F&& f) {
  switch (b) {
#define INFOMAX_BOUND_CASE(name, enumerator, reduction, objective, offset, param) \
  case MiBound::enumerator:                                                      \
    f(BoundTag<MiBound::enumerator>{});                                          \
    break;
    INFOMAX_BOUNDS(INFOMAX_BOUND_CASE)
#undef INFOMAX_BOUND_CASE
  }
}

// exp as the bounds take it: on the host the vectorisable exp of csrc/cpu/vec_math.h (the CPU
// kernels' loops over scores vectorise, and every CPU kernel using these terms gets the same
// bits), CUDA's exp on the device.
template <typename T>
INFOMAX_HOST_DEVICE T bound_exp(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return vec::exp(x);
#endif
}

// n(t): the negative term the reduction averages (MeanOf) or takes the log-mean-exp of
// (LogMeanExpOf). NaN stays NaN (SMILE's clip as torch.clamp).
template <MiBound B, typename T>
INFOMAX_HOST_DEVICE T bound_negative_term(T t, T param) {
  if constexpr (B == MiBound::Nwj) {
    return bound_exp(t - T(1));
  } else if constexpr (B == MiBound::Dv) {
    return t;
  } else if constexpr (B == MiBound::Js) {
    return bound_exp(t);
  } else {
    static_assert(B == MiBound::Smile, "bound_negative_term: no formula for this bound");
    return t < -param ? -param : (t > param ? param : t);
  }
}

// n'(t). SMILE's clip passes the gradient on [-tau, tau] (ends included) and stops it outside
// and at NaN, as torch.clamp's backward.
template <MiBound B, typename T>
INFOMAX_HOST_DEVICE T bound_negative_derivative(T t, T param) {
  if constexpr (B == MiBound::Nwj) {
    return bound_exp(t - T(1));
  } else if constexpr (B == MiBound::Dv) {
    return T(1);
  } else if constexpr (B == MiBound::Js) {
    return bound_exp(t);
  } else {
    static_assert(B == MiBound::Smile, "bound_negative_derivative: no formula for this bound");
    return ((t >= -param) & (t <= param)) ? T(1) : T(0);  // no branch: loops vectorise
  }
}

// d value / d t_k times g for a MeanOf bound: -g n'(t) / K (inv_k = 1 / K).
template <MiBound B, typename T>
INFOMAX_HOST_DEVICE T bound_mean_negative_grad(T t, T g, T inv_k, T param) {
  return -g * bound_negative_derivative<B>(t, param) * inv_k;
}

// d value / d t_k times g for a LogMeanExpOf bound: -g exp(n(t) - lse) n'(t), with the
// log-sum-exp of n over all negatives lse = shift + log_sum (shift: the largest n, or 0), taken
// as exp((n(t) - shift) - log_sum) so that no rounding of lse's magnitude enters.
template <MiBound B, typename T>
INFOMAX_HOST_DEVICE T bound_log_mean_exp_negative_grad(T t, T g, T shift, T log_sum, T param) {
  return -g * bound_exp((bound_negative_term<B>(t, param) - shift) - log_sum) *
         bound_negative_derivative<B>(t, param);
}

// d value / d t times g for one score of a vector holding joint scores and negatives (the NWJ
// head: critic_head, critic_mlp): g / M for a joint score, bound_mean_negative_grad for a negative.
template <MiBound B, typename T>
INFOMAX_HOST_DEVICE T mean_bound_score_grad(bool joint, T t, T g, T inv_m, T inv_k) {
  static_assert(BoundTraits<B>::reduction == BoundReduction::MeanOf &&
                    BoundTraits<B>::objective == BoundObjective::Value,
                "mean_bound_score_grad: a bound whose value is a mean and trains on its value");
  return joint ? g * inv_m : bound_mean_negative_grad<B>(t, g, inv_k, T(0));
}

// softplus(x) = log(1 + exp(x)), x itself above 20 (torch's threshold). On the device written
// with log, not log1p (several times slower): the absolute error stays within a rounding of 1,
// and the terms are averaged; on the host vec::softplus (log1p's precision, vectorisable).
template <typename T>
INFOMAX_HOST_DEVICE T js_softplus(T x) {
#if defined(__CUDA_ARCH__)
  return x > T(20) ? x : INFOMAX_MATH(log)(T(1) + INFOMAX_MATH(exp)(x));
#else
  return vec::softplus(x);
#endif
}

// softplus'(x): sigmoid(x), 1 above 20 (torch's softplus backward).
template <typename T>
INFOMAX_HOST_DEVICE T js_softplus_grad(T x) {
#if defined(__CUDA_ARCH__)
  return activation_derivative<Activation::Softplus>(x, T(0));
#else
  return vec::softplus_grad(x);
#endif
}

// The Jensen-Shannon objective's terms: -softplus(-t) per joint score, softplus(t) per negative
// (subtracted), and their derivatives times g (torch's softplus backward: sigmoid, 1 above 20).
template <typename T>
INFOMAX_HOST_DEVICE T js_joint_term(T t) {
  return -js_softplus(-t);
}
template <typename T>
INFOMAX_HOST_DEVICE T js_negative_term(T t) {
  return js_softplus(t);
}
template <typename T>
INFOMAX_HOST_DEVICE T js_joint_grad(T t, T g, T inv_m) {
  return g * js_softplus_grad(-t) * inv_m;
}
template <typename T>
INFOMAX_HOST_DEVICE T js_negative_grad(T t, T g, T inv_k) {
  return -g * js_softplus_grad(t) * inv_k;
}

}  // namespace infomax_ext
