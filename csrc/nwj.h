#pragma once
// Per-element pieces of the NWJ bound  I = mean(t_joint) - mean(exp(t_marg - 1)).
#include <cmath>

#include "macros.h"

namespace infomax_ext {

// Contribution of one marginal score to the sum inside the second mean.
template <typename T>
INFOMAX_HOST_DEVICE T nwj_marginal_term(T t) {
  return INFOMAX_MATH(exp)(t - T(1));
}

// d I / d t for one score, times the incoming gradient g: g / n_joint for a joint score,
// -g exp(t - 1) / n_marg for a marginal one.
template <typename T>
INFOMAX_HOST_DEVICE T nwj_score_grad(bool joint, T t, T g, T inv_n_joint, T inv_n_marg) {
  return joint ? g * inv_n_joint : -g * INFOMAX_MATH(exp)(t - T(1)) * inv_n_marg;
}

}  // namespace infomax_ext
