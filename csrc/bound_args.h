#pragma once
// The arguments of mi_bound and mi_bound_backward as both backends use them: checked (shapes,
// dtypes, devices, the bound's name and parameter) before any kernel runs, made contiguous, and
// for the backward op with its two gradients allocated.
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include "bounds.h"
#include "op_args.h"

namespace infomax_ext {

// The bound named `name` (csrc/bounds.h), with its parameter checked: a bound that takes none
// must get 0, a named one (SMILE's clip) a positive finite number.
inline MiBound checked_bound(const std::string& name, double param) {
  MiBound bound;
  INFOMAX_CHECK(parse_bound(name, &bound), "infomax_ext: unknown bound '", name,
                "'; supported: ", supported_bounds());
  const std::string param_name = bound_param_name(bound);
  if (param_name.empty()) {
    INFOMAX_CHECK(param == 0.0, "infomax_ext: bound '", name,
                  "' takes no parameter (param must be 0), got param = ", param);
  } else {
    INFOMAX_CHECK(std::isfinite(param) && param > 0.0, "infomax_ext: bound '", name, "': ",
                  param_name, " (param) must be a positive finite number, got ", param);
  }
  return bound;
}

// mi_bound: t_joint (M), t_negatives (K), one float dtype and device, M, K >= 1.
struct MiBoundArgs {
  Tensor t_joint, t_negatives;
  MiBound bound;
  double param;
  int64_t m, k;

  MiBoundArgs(const Tensor& t_joint_in, const Tensor& t_negatives_in, std::string_view bound_in,
              double param_in) {
    check_float32_or_64_tensor(t_joint_in, "t_joint", 1);
    check_float32_or_64_tensor(t_negatives_in, "t_negatives", 1);
    check_same(t_joint_in, t_negatives_in, "t_joint", "t_negatives");
    INFOMAX_CHECK(t_joint_in.size(0) >= 1 && t_negatives_in.size(0) >= 1,
                  "infomax_ext: mi_bound needs at least one joint and one negative score, got ",
                  t_joint_in.size(0), " and ", t_negatives_in.size(0));
    bound = checked_bound(std::string(bound_in), param_in);
    param = param_in;
    t_joint = as_contiguous(t_joint_in);
    t_negatives = as_contiguous(t_negatives_in);
    m = t_joint.size(0);
    k = t_negatives.size(0);
  }
};

// mi_bound_backward: the forward's arguments, the incoming gradients of the value and of the
// objective (one value each, either absent: no gradient from that output), the forward's third
// output log_sum_exp (2: shift, log_sum) or absent (then summed again), and the gradients of the
// scores (M) and (K).
struct MiBoundBackwardArgs : MiBoundArgs {
  Tensor grad_value, grad_objective, log_sum_exp, grad_joint, grad_negatives;
  bool has_grad_value, has_grad_objective, has_log_sum_exp;

  MiBoundBackwardArgs(const std::optional<Tensor>& grad_value_in,
                      const std::optional<Tensor>& grad_objective_in, const Tensor& t_joint_in,
                      const Tensor& t_negatives_in, std::string_view bound_in, double param_in,
                      const std::optional<Tensor>& log_sum_exp_in)
      : MiBoundArgs(t_joint_in, t_negatives_in, bound_in, param_in) {
    has_log_sum_exp = log_sum_exp_in.has_value() && log_sum_exp_in->defined();
    if (has_log_sum_exp) {
      check_float_tensor(*log_sum_exp_in, "log_sum_exp", 1);
      check_same(t_joint, *log_sum_exp_in, "t_joint", "log_sum_exp");
      INFOMAX_CHECK(log_sum_exp_in->size(0) == 2, "infomax_ext: log_sum_exp must have 2 entries "
                    "(mi_bound's third output), got ", log_sum_exp_in->size(0));
      log_sum_exp = as_contiguous(*log_sum_exp_in);
    }
    has_grad_value = grad_value_in.has_value() && grad_value_in->defined();
    has_grad_objective = grad_objective_in.has_value() && grad_objective_in->defined();
    if (has_grad_value) {
      check_scalar_grad(*grad_value_in, t_joint, "grad_value");
      grad_value = as_contiguous(*grad_value_in);
    }
    if (has_grad_objective) {
      check_scalar_grad(*grad_objective_in, t_joint, "grad_objective");
      grad_objective = as_contiguous(*grad_objective_in);
    }
    grad_joint = empty_like_shape(t_joint);
    grad_negatives = empty_like_shape(t_negatives);
  }

  std::tuple<Tensor, Tensor> grads() const { return {grad_joint, grad_negatives}; }
};

}  // namespace infomax_ext
