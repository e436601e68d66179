#pragma once
// The arguments of the ops as both backends use them: checked (checks.h), made contiguous, and
// for the backward ops with their outputs allocated (an empty tensor for each gradient not asked
// for). The CUDA front ends construct these under their device guard.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <optional>
#include <string>

#include "checks.h"

namespace infomax_ext {

inline at::Tensor gradient_or_empty(bool wanted, at::IntArrayRef shape, const at::Tensor& like) {
  return wanted ? at::empty(shape, like.options()) : at::empty({0}, like.options());
}

// paired_first_layer: a (N, H), b (M, H), c = the shuffled source or b, bias (H), perm (M).
struct PairedFirstLayerArgs {
  at::Tensor a, b, c, bias, perm;
  bool has_source;
  Activation act;
  int64_t n, h, m;

  PairedFirstLayerArgs(const at::Tensor& data_half, const at::Tensor& latent_half,
                       const std::optional<at::Tensor>& shuffled_source, const at::Tensor& bias_in,
                       const at::Tensor& perm_in, c10::string_view activation) {
    check_paired_first_layer(data_half, latent_half, shuffled_source, bias_in, perm_in);
    act = checked_activation(std::string(activation));
    a = data_half.contiguous();
    b = latent_half.contiguous();
    has_source = shuffled_source.has_value() && shuffled_source->defined();
    c = has_source ? shuffled_source->contiguous() : b;
    bias = bias_in.contiguous();
    perm = perm_in.contiguous();
    n = a.size(0);
    h = a.size(1);
    m = b.size(0);
  }
};

// paired_first_layer_backward: the forward's arguments plus grad_out (2M, H), the inverse
// permutation, and the four gradients (data half, latent half, shuffled source, bias).
struct PairedFirstLayerBackwardArgs : PairedFirstLayerArgs {
  at::Tensor go, inv, grad_a, grad_b, grad_c, grad_bias;
  bool want_a, want_b, want_c, want_bias;

  PairedFirstLayerBackwardArgs(const at::Tensor& grad_out, const at::Tensor& data_half,
                               const at::Tensor& latent_half,
                               const std::optional<at::Tensor>& shuffled_source,
                               const at::Tensor& bias_in, const at::Tensor& perm_in,
                               const at::Tensor& inverse_perm, c10::string_view activation,
                               std::array<bool, 4> output_mask)
      : PairedFirstLayerArgs(data_half, latent_half, shuffled_source, bias_in, perm_in, activation) {
    check_float_tensor(grad_out, "grad_out", 2);
    check_same(a, grad_out, "data_half", "grad_out");
    TORCH_CHECK(grad_out.size(0) == 2 * m && grad_out.size(1) == h, "infomax_ext: grad_out has shape ",
                grad_out.sizes(), ", expected [", 2 * m, ", ", h, "]");
    check_index_vector(inverse_perm, a, "inverse_perm", m);
    go = grad_out.contiguous();
    inv = inverse_perm.contiguous();
    want_a = output_mask[0];
    want_b = output_mask[1];
    want_c = output_mask[2] && has_source;
    want_bias = output_mask[3];
    grad_a = gradient_or_empty(want_a, {n, h}, a);
    grad_b = gradient_or_empty(want_b, {m, h}, a);
    grad_c = gradient_or_empty(want_c, {m, h}, a);
    grad_bias = gradient_or_empty(want_bias, {h}, a);
  }

  bool any_wanted() const { return want_a || want_b || want_c || want_bias; }
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grads() const {
    return {grad_a, grad_b, grad_c, grad_bias};
  }
};

// A gradient that must be a single value (of the bound) on the data's device and dtype.
inline void check_scalar_grad(const at::Tensor& grad, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(grad.defined() && grad.numel() == 1, "infomax_ext: ", name,
              " must hold one value, got shape ", grad.sizes());
  check_same(ref, grad, "the scores", name);
}

// nwj_head_backward: hidden (R, h), weight (h), scores and pre (R), grad_bound (one value),
// grad_scores (R) or absent, and the three gradients (hidden, weight, bias).
struct NwjHeadBackwardArgs {
  at::Tensor hidden, w, scores, pre, grad_bound, gs, grad_hidden, grad_w, grad_b;
  bool has_gs, want_hidden, want_w, want_b;
  Activation act;
  int64_t rows, h;

  NwjHeadBackwardArgs(const at::Tensor& grad_bound_in, const std::optional<at::Tensor>& grad_scores,
                      const at::Tensor& hidden_in, const at::Tensor& weight_in,
                      const at::Tensor& scores_in, const at::Tensor& pre_in, int64_t n_joint,
                      c10::string_view activation, std::array<bool, 3> output_mask) {
    check_nwj_head(hidden_in, weight_in, std::nullopt, n_joint);
    check_scalar_grad(grad_bound_in, hidden_in, "grad_bound");
    act = checked_activation(std::string(activation));
    hidden = hidden_in.contiguous();
    w = weight_in.contiguous();
    scores = scores_in.contiguous();
    pre = pre_in.contiguous();
    grad_bound = grad_bound_in.contiguous();
    rows = hidden.size(0);
    h = hidden.size(1);
    TORCH_CHECK(scores.numel() == rows && pre.numel() == rows,
                "infomax_ext: scores and pre must have one entry per row of hidden");
    check_same(hidden, scores, "hidden", "scores");
    check_same(hidden, pre, "hidden", "pre");
    has_gs = grad_scores.has_value() && grad_scores->defined();
    if (has_gs) {
      gs = grad_scores->contiguous();
      TORCH_CHECK(gs.numel() == rows, "infomax_ext: grad_scores must have ", rows, " entries");
      check_same(hidden, gs, "hidden", "grad_scores");
    }
    want_hidden = output_mask[0];
    want_w = output_mask[1];
    want_b = output_mask[2];
    grad_hidden = gradient_or_empty(want_hidden, {rows, h}, hidden);
    grad_w = gradient_or_empty(want_w, {h}, hidden);
    grad_b = gradient_or_empty(want_b, {1}, hidden);
  }

  bool any_wanted() const { return want_hidden || want_w || want_b; }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads() const { return {grad_hidden, grad_w, grad_b}; }
};

}  // namespace infomax_ext
