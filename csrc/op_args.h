#pragma once
// The arguments of the ops as both backends use them: checked (checks.h), made contiguous, and
// for the backward ops with their outputs allocated (an empty tensor for each gradient not asked
// for). The CUDA front ends construct these under their device guard.
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

// paired_first_layer: a (N, H), b (M, H), c = the shuffled source or b, bias (H), perm (M).
struct PairedFirstLayerArgs {
  Tensor a, b, c, bias, perm;
  bool has_source;
  Activation act;
  int64_t n, h, m;

  PairedFirstLayerArgs(const Tensor& data_half, const Tensor& latent_half,
                       const std::optional<Tensor>& shuffled_source, const Tensor& bias_in,
                       const Tensor& perm_in, std::string_view activation) {
    check_paired_first_layer(data_half, latent_half, shuffled_source, bias_in, perm_in);
    act = checked_activation(std::string(activation));
    a = as_contiguous(data_half);
    b = as_contiguous(latent_half);
    has_source = shuffled_source.has_value() && shuffled_source->defined();
    c = has_source ? as_contiguous(*shuffled_source) : b;
    bias = as_contiguous(bias_in);
    perm = as_contiguous(perm_in);
    n = a.size(0);
    h = a.size(1);
    m = b.size(0);
  }
};

// paired_first_layer_backward: the forward's arguments plus grad_out (2M, H), the inverse
// permutation, and the four gradients (data half, latent half, shuffled source, bias).
struct PairedFirstLayerBackwardArgs : PairedFirstLayerArgs {
  Tensor go, inv, grad_a, grad_b, grad_c, grad_bias;
  bool want_a, want_b, want_c, want_bias;

  PairedFirstLayerBackwardArgs(const Tensor& grad_out, const Tensor& data_half,
                               const Tensor& latent_half,
                               const std::optional<Tensor>& shuffled_source,
                               const Tensor& bias_in, const Tensor& perm_in,
                               const Tensor& inverse_perm, std::string_view activation,
                               const std::vector<bool>& mask_in)
      : PairedFirstLayerArgs(data_half, latent_half, shuffled_source, bias_in, perm_in, activation) {
    check_float_tensor(grad_out, "grad_out", 2);
    check_same(a, grad_out, "data_half", "grad_out");
    INFOMAX_CHECK(grad_out.size(0) == 2 * m && grad_out.size(1) == h, "infomax_ext: grad_out has shape ",
                shape_of(grad_out), ", expected [", 2 * m, ", ", h, "]");
    check_index_vector(inverse_perm, a, "inverse_perm", m);
    go = as_contiguous(grad_out);
    inv = as_contiguous(inverse_perm);
    const std::vector<bool> output_mask = checked_mask(mask_in, 4);
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
  std::tuple<Tensor, Tensor, Tensor, Tensor> grads() const {
    return {grad_a, grad_b, grad_c, grad_bias};
  }
};

// A gradient that must be a single value (of the bound) on the data's device and dtype.
inline void check_scalar_grad(const Tensor& grad, const Tensor& ref, const char* name) {
  INFOMAX_CHECK(grad.defined() && grad.numel() == 1, "infomax_ext: ", name,
              " must hold one value, got shape ", shape_of(grad));
  check_same(ref, grad, "the scores", name);
}

// nwj_head_backward: hidden (R, h), weight (h), scores and pre (R), grad_bound (one value),
// grad_scores (R) or absent, and the three gradients (hidden, weight, bias).
struct NwjHeadBackwardArgs {
  Tensor hidden, w, scores, pre, grad_bound, gs, grad_hidden, grad_w, grad_b;
  bool has_gs, want_hidden, want_w, want_b;
  Activation act;
  int64_t rows, h;

  NwjHeadBackwardArgs(const Tensor& grad_bound_in, const std::optional<Tensor>& grad_scores,
                      const Tensor& hidden_in, const Tensor& weight_in,
                      const Tensor& scores_in, const Tensor& pre_in, int64_t n_joint,
                      std::string_view activation, const std::vector<bool>& mask_in) {
    check_nwj_head(hidden_in, weight_in, std::nullopt, n_joint);
    check_scalar_grad(grad_bound_in, hidden_in, "grad_bound");
    act = checked_activation(std::string(activation));
    hidden = as_contiguous(hidden_in);
    w = as_contiguous(weight_in);
    scores = as_contiguous(scores_in);
    pre = as_contiguous(pre_in);
    grad_bound = as_contiguous(grad_bound_in);
    rows = hidden.size(0);
    h = hidden.size(1);
    INFOMAX_CHECK(scores.numel() == rows && pre.numel() == rows,
                "infomax_ext: scores and pre must have one entry per row of hidden");
    check_same(hidden, scores, "hidden", "scores");
    check_same(hidden, pre, "hidden", "pre");
    has_gs = grad_scores.has_value() && grad_scores->defined();
    if (has_gs) {
      gs = as_contiguous(*grad_scores);
      INFOMAX_CHECK(gs.numel() == rows, "infomax_ext: grad_scores must have ", rows, " entries");
      check_same(hidden, gs, "hidden", "grad_scores");
    }
    const std::vector<bool> output_mask = checked_mask(mask_in, 3);
    want_hidden = output_mask[0];
    want_w = output_mask[1];
    want_b = output_mask[2];
    grad_hidden = gradient_or_empty(want_hidden, {rows, h}, hidden);
    grad_w = gradient_or_empty(want_w, {h}, hidden);
    grad_b = gradient_or_empty(want_b, {1}, hidden);
  }

  bool any_wanted() const { return want_hidden || want_w || want_b; }
  std::tuple<Tensor, Tensor, Tensor> grads() const { return {grad_hidden, grad_w, grad_b}; }
};

}  // namespace infomax_ext
