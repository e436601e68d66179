#pragma once
// Activations the fused kernels support: value f(x) and derivative f'(x), per element.
// INFOMAX_ACTIVATIONS is the one list: it generates the enum, the names the schemas take, the
// dispatch and the "supported: ..." message. Adding an activation is one line there plus its
// formula in activation_value and activation_derivative (and the Python table in
// python/infomax_ext/activations.py). Kernels are instantiated once per activation
// (dispatch_activation), so the per-element code has no switch and the compiler can vectorise it.
//
// NaN and inf propagate as in torch's own CPU kernels (ATen's vectorised loops), checked at NaN,
// +-inf and 0 by tests/test_nonfinite.py: each comparison is written so that a NaN takes the
// branch torch takes (relu(NaN) = NaN and relu'(NaN) passes the gradient, as clamp_min and
// threshold_backward; leaky_relu'(NaN) = slope; elu'(NaN) = NaN, as ATen's vectorised
// elu_backward, whose scalar tail and CUDA kernel pass the gradient instead), and the selects
// stay branch-free. One torch quirk is not copied: float32 F.gelu on contiguous CPU tensors of
// more than one element runs oneDNN's kernel, which gives NaN at +inf; ATen's formula (float64,
// one element, strided tensors, CUDA) and these kernels give +inf.
#include <cmath>
#include <string>
#include <type_traits>

#include "macros.h"
#if !defined(__CUDA_ARCH__)
#include "cpu/vec_math.h"
#endif

namespace infomax_ext {

// X(name as the schemas spell it, enumerator). Parameters: leaky_relu's negative slope, elu's
// alpha; softplus has beta = 1 and threshold = 20 and gelu is the exact (erf) form, as torch's
// defaults.
#define INFOMAX_ACTIVATIONS(X) \
  X(identity, Identity)        \
  X(relu, Relu)                \
  X(leaky_relu, LeakyRelu)     \
  X(elu, Elu)                  \
  X(tanh, Tanh)                \
  X(sigmoid, Sigmoid)          \
  X(softplus, Softplus)        \
  X(gelu, Gelu)                \
  X(silu, Silu)                \
  X(mish, Mish)

enum class Activation : int {
#define INFOMAX_ENUMERATOR(name, enumerator) enumerator,
  INFOMAX_ACTIVATIONS(INFOMAX_ENUMERATOR)
#undef INFOMAX_ENUMERATOR
};

inline constexpr const char* kActivationNames[] = {
#define INFOMAX_NAME(name, enumerator) #name,
    INFOMAX_ACTIVATIONS(INFOMAX_NAME)
#undef INFOMAX_NAME
};
inline constexpr int kActivationCount = sizeof(kActivationNames) / sizeof(kActivationNames[0]);

// Parses the schema's activation name; returns false for an unknown name.
inline bool parse_activation(const std::string& name, Activation* out) {
  for (int i = 0; i < kActivationCount; ++i) {
    if (name == kActivationNames[i]) {
      *out = static_cast<Activation>(i);
      return true;
    }
  }
  return false;
}

// "identity, relu, ...": the supported names, for error messages.
inline std::string supported_activations() {
  std::string names;
  for (int i = 0; i < kActivationCount; ++i) names += (i ? ", " : "") + std::string(kActivationNames[i]);
  return names;
}

template <Activation A>
using ActivationTag = std::integral_constant<Activation, A>;

// Calls f(ActivationTag<A>{}) with the compile-time tag of the runtime value act.
template <typename F>
inline void dispatch_activation(Activation act, F&& f) {
  switch (act) {
#define INFOMAX_CASE(name, enumerator)                      \
  case Activation::enumerator:                              \
    f(ActivationTag<Activation::enumerator>{});             \
    break;
    INFOMAX_ACTIVATIONS(INFOMAX_CASE)
#undef INFOMAX_CASE
  }
}

// exp, expm1, tanh and softplus as the activations take them: on the host the vectorisable
// functions of csrc/cpu/vec_math.h (a loop over a layer's units vectorises; a libm call would
// keep it scalar, 10-100x slower), CUDA's on the device.
template <typename T>
INFOMAX_HOST_DEVICE T act_exp(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return vec::exp(x);
#endif
}
template <typename T>
INFOMAX_HOST_DEVICE T act_expm1(T x) {
#if defined(__CUDA_ARCH__)
  return ::expm1(x);
#else
  return vec::expm1(x);
#endif
}
template <typename T>
INFOMAX_HOST_DEVICE T act_tanh(T x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return vec::tanh(x);
#endif
}
// erf: on the host vec::erf for float, libm's for double.
template <typename T>
INFOMAX_HOST_DEVICE T act_erf(T x) {
#if defined(__CUDA_ARCH__)
  return ::erf(x);
#else
  if constexpr (std::is_same_v<T, float>) {
    return vec::erf(x);
  } else {
    return std::erf(x);
  }
#endif
}
// log(1 + exp(x)); x itself above 20 on the host (vec::softplus, torch's softplus threshold),
// where log1p(exp(x)) rounds to x in float and double alike.
template <typename T>
INFOMAX_HOST_DEVICE T act_softplus(T x) {
#if defined(__CUDA_ARCH__)
  return ::log1p(::exp(x));
#else
  return vec::softplus(x);
#endif
}

template <typename T>
INFOMAX_HOST_DEVICE T sigmoid_of(T x) {
  return T(1) / (T(1) + act_exp(-x));
}

template <Activation A, typename T>
INFOMAX_HOST_DEVICE T activation_value(T x, T param) {
  if constexpr (A == Activation::Identity) {
    return x;
  } else if constexpr (A == Activation::Relu) {
    return x < T(0) ? T(0) : x;  // NaN stays NaN (torch.relu is clamp_min, which keeps NaN)
  } else if constexpr (A == Activation::LeakyRelu) {
    return x > T(0) ? x : x * param;
  } else if constexpr (A == Activation::Elu) {
    return x > T(0) ? x : param * act_expm1(x);
  } else if constexpr (A == Activation::Tanh) {
    return act_tanh(x);
  } else if constexpr (A == Activation::Sigmoid) {
    return sigmoid_of(x);
  } else if constexpr (A == Activation::Softplus) {
    return x > T(20) ? x : act_softplus(x);
  } else if constexpr (A == Activation::Gelu) {
    return T(0.5) * x * (T(1) + act_erf(x * T(0.70710678118654752440)));
  } else if constexpr (A == Activation::Silu) {
    return x * sigmoid_of(x);
  } else {
    static_assert(A == Activation::Mish, "activation_value: no formula for this activation");
    return x * act_tanh(act_softplus(x));  // x tanh(softplus x)
  }
}

// Derivative at the pre-activation x, matching torch's backward formulas (relu'(0) = 0,
// leaky_relu'(0) = slope, elu'(0) = alpha; at NaN: relu' = 1, leaky_relu' = slope, elu' = NaN,
// as torch's threshold_backward, leaky_relu_backward and vectorised elu_backward).
template <Activation A, typename T>
INFOMAX_HOST_DEVICE T activation_derivative(T x, T param) {
  if constexpr (A == Activation::Identity) {
    return T(1);
  } else if constexpr (A == Activation::Relu) {
    return x <= T(0) ? T(0) : T(1);
  } else if constexpr (A == Activation::LeakyRelu) {
    return x > T(0) ? T(1) : param;
  } else if constexpr (A == Activation::Elu) {
    return x > T(0) ? T(1) : param * act_exp(x);
  } else if constexpr (A == Activation::Tanh) {
    const T t = act_tanh(x);
    return T(1) - t * t;
  } else if constexpr (A == Activation::Sigmoid) {
    const T s = sigmoid_of(x);
    return s * (T(1) - s);
  } else if constexpr (A == Activation::Softplus) {
    return x > T(20) ? T(1) : sigmoid_of(x);
  } else if constexpr (A == Activation::Gelu) {
    const T cdf = T(0.5) * (T(1) + act_erf(x * T(0.70710678118654752440)));
    const T pdf = act_exp(T(-0.5) * x * x) * T(0.39894228040143267794);  // 1/sqrt(2 pi)
    return cdf + x * pdf;
  } else if constexpr (A == Activation::Silu) {
    const T s = sigmoid_of(x);
    return s * (T(1) + x * (T(1) - s));
  } else {
    static_assert(A == Activation::Mish, "activation_derivative: no formula for this activation");
    // tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2) with sp = softplus(x), as torch's mish_backward.
    const T t = act_tanh(act_softplus(x));
    return t + x * sigmoid_of(x) * (T(1) - t * t);
  }
}

// Identity and ReLU give their derivative from the output as well as from the pre-activation
// (relu'(x) = [relu(x) > 0]; a NaN passes the gradient either way, as torch's
// threshold_backward), so their backward passes read the output and keep no pre-activation
// (python/infomax_ext/activations.py: OUTPUT_DERIVATIVE_ACTIVATIONS).
constexpr bool derivative_from_output(Activation act) {
  return act == Activation::Identity || act == Activation::Relu;
}

// g * f'(x): the incoming gradient g through the activation at pre-activation x. Written as a
// select for the piecewise-linear activations so that compilers vectorise it without branches.
template <Activation A, typename T>
INFOMAX_HOST_DEVICE T activation_grad(T g, T x, T param) {
  if constexpr (A == Activation::Identity) {
    return g;
  } else if constexpr (A == Activation::Relu) {
    return x <= T(0) ? T(0) : g;  // a NaN pre-activation passes g, as torch's threshold_backward
  } else if constexpr (A == Activation::LeakyRelu) {
    return x > T(0) ? g : g * param;
  } else {
    return g * activation_derivative<A>(x, param);
  }
}

}  // namespace infomax_ext
