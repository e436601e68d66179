#pragma once
// The arguments of the ops as both backends use them: checked (checks.h), made contiguous, and
// for the backward ops with their outputs allocated (an empty tensor for each gradient not asked
// for). The CUDA front ends construct these under their device guard.
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "checks.h"

namespace infomax_ext {

inline Tensor gradient_or_empty(bool wanted, std::initializer_list<int64_t> shape,
                                const Tensor& like) {
  return wanted ? empty_on(like, shape) : empty_on(like, {0});
}

// The output_mask of a backward op's schema (bool[K]), checked for its length.
inline std::vector<bool> checked_mask(const std::vector<bool>& mask, size_t length) {
  INFOMAX_CHECK(mask.size() == length, "infomax_ext: output_mask must have ", length,
                " entries, got ", mask.size());
  return mask;
}

// paired_first_layer: data_half (N, H), latent_half (M, H), source = the shuffled source or
// latent_half (M, H), bias (H), perm (M).
struct PairedFirstLayerArgs {
  Tensor data_half, latent_half, source, bias, perm;
  bool has_source;
  Activation act;
  int64_t n, h, m;

  PairedFirstLayerArgs(const Tensor& data_half_in, const Tensor& latent_half_in,
                       const std::optional<Tensor>& shuffled_half, const Tensor& bias_in,
                       const Tensor& perm_in, std::string_view activation) {
    check_paired_first_layer(data_half_in, latent_half_in, shuffled_half, bias_in, perm_in);
    act = checked_activation(std::string(activation));
    data_half = as_contiguous(data_half_in);
    latent_half = as_contiguous(latent_half_in);
    has_source = shuffled_half.has_value() && shuffled_half->defined();
    source = has_source ? as_contiguous(*shuffled_half) : latent_half;
    bias = as_contiguous(bias_in);
    perm = as_contiguous(perm_in);
    n = data_half.size(0);
    h = data_half.size(1);
    m = latent_half.size(0);
  }
};

// paired_first_layer_backward: the forward's arguments plus grad_out (2M, H), the inverse
// permutation, and the four gradients (data half, latent half, shuffled source, bias).
struct PairedFirstLayerBackwardArgs : PairedFirstLayerArgs {
  Tensor grad_out, inverse_perm, grad_data_half, grad_latent_half, grad_source, grad_bias;
  bool want_data_half, want_latent_half, want_source, want_bias;

  PairedFirstLayerBackwardArgs(const Tensor& grad_out_in, const Tensor& data_half_in,
                               const Tensor& latent_half_in,
                               const std::optional<Tensor>& shuffled_half,
                               const Tensor& bias_in, const Tensor& perm_in,
                               const Tensor& inverse_perm_in, std::string_view activation,
                               const std::vector<bool>& mask_in)
      : PairedFirstLayerArgs(data_half_in, latent_half_in, shuffled_half, bias_in, perm_in,
                             activation) {
    check_float_tensor(grad_out_in, "grad_out", 2);
    check_same(data_half, grad_out_in, "data_half", "grad_out");
    INFOMAX_CHECK(grad_out_in.size(0) == 2 * m && grad_out_in.size(1) == h,
                  "infomax_ext: grad_out has shape ", shape_of(grad_out_in), ", expected [", 2 * m,
                  ", ", h, "]");
    check_index_vector(inverse_perm_in, data_half, "inverse_perm", m);
    grad_out = as_contiguous(grad_out_in);
    inverse_perm = as_contiguous(inverse_perm_in);
    const std::vector<bool> output_mask = checked_mask(mask_in, 4);
    want_data_half = output_mask[0];
    want_latent_half = output_mask[1];
    want_source = output_mask[2] && has_source;
    want_bias = output_mask[3];
    grad_data_half = gradient_or_empty(want_data_half, {n, h}, data_half);
    grad_latent_half = gradient_or_empty(want_latent_half, {m, h}, data_half);
    grad_source = gradient_or_empty(want_source, {m, h}, data_half);
    grad_bias = gradient_or_empty(want_bias, {h}, data_half);
  }

  bool any_wanted() const { return want_data_half || want_latent_half || want_source || want_bias; }
  std::tuple<Tensor, Tensor, Tensor, Tensor> grads() const {
    return {grad_data_half, grad_latent_half, grad_source, grad_bias};
  }
};

// paired_first_layer_backward from the layer's output (identity, relu; called by
// paired_linear_backward, which checked every argument): grad_out and out (2M, H), perm and the
// inverse (M), n data rows, and the four gradients, each allocated only when wanted.
struct PairedFromOutputBackwardArgs {
  Tensor grad_out, out, perm, inverse_perm;
  std::array<bool, 4> want;
  std::array<Tensor, 4> grads;  // data half (N, H), latent half (M, H), source (M, H), bias (H)
  int64_t n, m, h;

  PairedFromOutputBackwardArgs(const Tensor& grad_out_in, const Tensor& out_in, int64_t n_in,
                               bool has_source, const Tensor& perm_in,
                               const Tensor& inverse_perm_in, const std::vector<bool>& want_in)
      : grad_out(as_contiguous(grad_out_in)), out(as_contiguous(out_in)),
        perm(as_contiguous(perm_in)), inverse_perm(as_contiguous(inverse_perm_in)),
        want{want_in[0], want_in[1], want_in[2] && has_source, want_in[3]},
        n(n_in), m(perm_in.size(0)), h(out_in.size(1)) {
    grads = {gradient_or_empty(want[0], {n, h}, out), gradient_or_empty(want[1], {m, h}, out),
             gradient_or_empty(want[2], {m, h}, out), gradient_or_empty(want[3], {h}, out)};
  }

  std::tuple<Tensor, Tensor, Tensor, Tensor> result() const {
    return {grads[0], grads[1], grads[2], grads[3]};
  }
};

// A gradient that must be a single value (of the bound) on the scores' device, in the bound's
// dtype (bound_scalar_type: float32 for bfloat16 and float16 scores, else the scores' dtype).
inline void check_scalar_grad(const Tensor& grad, const Tensor& ref, const char* name) {
  INFOMAX_CHECK(grad.defined() && grad.numel() == 1, "infomax_ext: ", name,
              " must hold one value, got shape ", shape_of(grad));
  const ScalarType expected = bound_scalar_type(ref.scalar_type());
  INFOMAX_CHECK(grad.scalar_type() == expected, "infomax_ext: dtype mismatch: ", name, " is ",
                grad.scalar_type(), " but the bound of ", ref.scalar_type(), " scores is ",
                expected);
  INFOMAX_CHECK(same_device(grad, ref), "infomax_ext: device mismatch: ", name, " is on ",
                device_of(grad), " but the scores are on ", device_of(ref));
}

// critic_head_backward: hidden (R, h), weight (h), scores and pre (R), grad_bound (one value),
// grad_scores (R) or absent, and the three gradients (hidden, weight, bias).
struct CriticHeadBackwardArgs {
  Tensor hidden, weight, scores, pre, grad_bound, grad_scores, grad_hidden, grad_weight, grad_bias;
  bool has_grad_scores, want_hidden, want_weight, want_bias;
  Activation act;
  int64_t rows, h;

  CriticHeadBackwardArgs(const Tensor& grad_bound_in, const std::optional<Tensor>& grad_scores_in,
                      const Tensor& hidden_in, const Tensor& weight_in,
                      const Tensor& scores_in, const Tensor& pre_in, int64_t n_joint,
                      std::string_view activation, const std::vector<bool>& mask_in) {
    check_critic_head(hidden_in, weight_in, std::nullopt, n_joint);
    check_scalar_grad(grad_bound_in, hidden_in, "grad_bound");
    act = checked_activation(std::string(activation));
    hidden = as_contiguous(hidden_in);
    weight = as_contiguous(weight_in);
    scores = as_contiguous(scores_in);
    pre = as_contiguous(pre_in);
    grad_bound = as_contiguous(grad_bound_in);
    rows = hidden.size(0);
    h = hidden.size(1);
    INFOMAX_CHECK(scores.numel() == rows && pre.numel() == rows,
                "infomax_ext: scores and pre must have one entry per row of hidden");
    check_same(hidden, scores, "hidden", "scores");
    check_same(hidden, pre, "hidden", "pre");
    has_grad_scores = grad_scores_in.has_value() && grad_scores_in->defined();
    if (has_grad_scores) {
      grad_scores = as_contiguous(*grad_scores_in);
      INFOMAX_CHECK(grad_scores.numel() == rows, "infomax_ext: grad_scores must have ", rows, " entries");
      check_same(hidden, grad_scores, "hidden", "grad_scores");
    }
    const std::vector<bool> output_mask = checked_mask(mask_in, 3);
    want_hidden = output_mask[0];
    want_weight = output_mask[1];
    want_bias = output_mask[2];
    grad_hidden = gradient_or_empty(want_hidden, {rows, h}, hidden);
    grad_weight = gradient_or_empty(want_weight, {h}, hidden);
    grad_bias = gradient_or_empty(want_bias, {1}, hidden);
  }

  bool any_wanted() const { return want_hidden || want_weight || want_bias; }
  std::tuple<Tensor, Tensor, Tensor> grads() const { return {grad_hidden, grad_weight, grad_bias}; }
};

}  // namespace infomax_ext
