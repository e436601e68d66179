#pragma once
// Activations the fused kernels support: value f(x) and derivative f'(x), per element.
// The order of the enum matches KERNEL_ACTIVATIONS in python/infomax_ext/activations.py.
// Kernels are instantiated once per activation (dispatch_activation), so the per-element
// code has no switch and the compiler can vectorise it.
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

namespace infomax_ext {

enum class Activation : int {
  Identity = 0,
  Relu,
  LeakyRelu,  // param = negative slope
  Elu,        // param = alpha
  Tanh,
  Sigmoid,
  Softplus,   // beta = 1, threshold = 20, as torch.nn.functional.softplus
  Gelu,       // exact (erf) form
  Silu,
};

// Parses the schema's activation name; returns false for an unknown name.
inline bool parse_activation(const std::string& name, Activation* out) {
  static const char* names[] = {"identity", "relu", "leaky_relu", "elu", "tanh",
                                "sigmoid", "softplus", "gelu", "silu"};
  for (int i = 0; i < 9; ++i) {
    if (name == names[i]) {
      *out = static_cast<Activation>(i);
      return true;
    }
  }
  return false;
}

template <Activation A>
using ActivationTag = std::integral_constant<Activation, A>;

// Calls f(ActivationTag<A>{}) with the compile-time tag of the runtime value act.
template <typename F>
inline void dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::Identity: f(ActivationTag<Activation::Identity>{}); break;
    case Activation::Relu: f(ActivationTag<Activation::Relu>{}); break;
    case Activation::LeakyRelu: f(ActivationTag<Activation::LeakyRelu>{}); break;
    case Activation::Elu: f(ActivationTag<Activation::Elu>{}); break;
    case Activation::Tanh: f(ActivationTag<Activation::Tanh>{}); break;
    case Activation::Sigmoid: f(ActivationTag<Activation::Sigmoid>{}); break;
    case Activation::Softplus: f(ActivationTag<Activation::Softplus>{}); break;
    case Activation::Gelu: f(ActivationTag<Activation::Gelu>{}); break;
    case Activation::Silu: f(ActivationTag<Activation::Silu>{}); break;
  }
}

template <typename T>
INFOMAX_HOST_DEVICE T sigmoid_of(T x) {
  return T(1) / (T(1) + INFOMAX_MATH(exp)(-x));
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
    return x > T(0) ? x : param * INFOMAX_MATH(expm1)(x);
  } else if constexpr (A == Activation::Tanh) {
    return INFOMAX_MATH(tanh)(x);
  } else if constexpr (A == Activation::Sigmoid) {
    return sigmoid_of(x);
  } else if constexpr (A == Activation::Softplus) {
    return x > T(20) ? x : INFOMAX_MATH(log1p)(INFOMAX_MATH(exp)(x));
  } else if constexpr (A == Activation::Gelu) {
    return T(0.5) * x * (T(1) + INFOMAX_MATH(erf)(x * T(0.70710678118654752440)));
  } else {
    return x * sigmoid_of(x);
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
    return x > T(0) ? T(1) : param * INFOMAX_MATH(exp)(x);
  } else if constexpr (A == Activation::Tanh) {
    const T t = INFOMAX_MATH(tanh)(x);
    return T(1) - t * t;
  } else if constexpr (A == Activation::Sigmoid) {
    const T s = sigmoid_of(x);
    return s * (T(1) - s);
  } else if constexpr (A == Activation::Softplus) {
    return x > T(20) ? T(1) : sigmoid_of(x);
  } else if constexpr (A == Activation::Gelu) {
    const T cdf = T(0.5) * (T(1) + INFOMAX_MATH(erf)(x * T(0.70710678118654752440)));
    const T pdf = INFOMAX_MATH(exp)(T(-0.5) * x * x) * T(0.39894228040143267794);  // 1/sqrt(2 pi)
    return cdf + x * pdf;
  } else {
    const T s = sigmoid_of(x);
    return s * (T(1) + x * (T(1) - s));
  }
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
