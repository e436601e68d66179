#pragma once
// The arguments of bernoulli_loglik and bernoulli_loglik_backward as both backends use them:
// checked (shapes, dtypes, devices) before any kernel runs, made contiguous, and for the
// backward op with its gradients allocated (an empty tensor for one not asked for).
#include <tuple>
#include <vector>

#include "op_args.h"

namespace infomax_ext {

// bernoulli_loglik: p (M, D) and x (N, D), one float32/float64 dtype and device, M = S N with
// S >= 1, N, D >= 1. Row r of p is scored against row r % N of x.
struct BernoulliArgs {
  Tensor p, x;
  int64_t m, n, d;

  BernoulliArgs(const Tensor& p_in, const Tensor& x_in) {
    check_float32_or_64_tensor(p_in, "p", 2);
    check_float32_or_64_tensor(x_in, "x", 2);
    check_same(p_in, x_in, "p", "x");
    INFOMAX_CHECK(x_in.size(0) >= 1 && x_in.size(1) >= 1,
                  "infomax_ext: bernoulli_loglik needs at least one row and one feature, got x "
                  "of shape ", shape_of(x_in));
    INFOMAX_CHECK(p_in.size(1) == x_in.size(1), "infomax_ext: p has ", p_in.size(1),
                  " features per row but x has ", x_in.size(1));
    INFOMAX_CHECK(p_in.size(0) >= 1 && p_in.size(0) % x_in.size(0) == 0, "infomax_ext: p has ",
                  p_in.size(0), " rows, not a positive multiple of the ", x_in.size(0),
                  " rows of x");
    p = as_contiguous(p_in);
    x = as_contiguous(x_in);
    m = p.size(0);
    n = x.size(0);
    d = p.size(1);
  }
};

// bernoulli_loglik_backward: the incoming gradient (M), the forward's arguments, and the
// gradients of p (M, D) and x (N, D) for output_mask = [p, x].
struct BernoulliBackwardArgs : BernoulliArgs {
  Tensor grad, grad_p, grad_x;
  bool want_p, want_x;

  BernoulliBackwardArgs(const Tensor& grad_in, const Tensor& p_in, const Tensor& x_in,
                        const std::vector<bool>& mask_in)
      : BernoulliArgs(p_in, x_in) {
    check_float32_or_64_tensor(grad_in, "grad", 1);
    check_same(p, grad_in, "p", "grad");
    INFOMAX_CHECK(grad_in.size(0) == m, "infomax_ext: grad has ", grad_in.size(0),
                  " entries but p has ", m, " rows (one log-likelihood per row)");
    const std::vector<bool> mask = checked_mask(mask_in, 2);
    want_p = mask[0];
    want_x = mask[1];
    grad = as_contiguous(grad_in);
    grad_p = gradient_or_empty(want_p, {m, d}, p);
    grad_x = gradient_or_empty(want_x, {n, d}, p);
  }

  std::tuple<Tensor, Tensor> grads() const { return {grad_p, grad_x}; }
};

}  // namespace infomax_ext
