// critic_mlp: the MI chain after its paired first layer, as one op: the hidden Linear layers
//   h_{l+1} = act_l(h_l W_l^T + b_l),   l = 0 .. L-1   (h_0 = hidden, (R, H_0), R = 2 M rows:
//                                                       M joint pairs, then M shuffled pairs)
// and the NWJ head: scores t = act(h_L . w + b) and the bound
//   mean(t[:M]) - mean(exp(t[M:] - 1)).
// Device-agnostic (CompositeExplicitAutograd): the products go through csrc/gemm.h (oneDNN
// with the bias fused on the CPU in float32, else MKL or cuBLAS), the per-element
// passes and the head to our kernels for the device, called directly. Every argument is
// checked before any work.
//
// critic_mlp_forward keeps what the backward needs: each layer's output h_{l+1}, and its
// pre-activation only for activations whose derivative needs it (not identity or relu, whose
// derivative is read from the output); the head's pre-activation. critic_mlp_backward computes
// every gradient in one call, the activation derivative applied in place to the incoming
// gradient in the same pass that sums the bias gradient: python/infomax_ext/critic_mlp_op.py
// wraps the pair in one autograd node.
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "chain_parts.h"
#include "checks.h"
#include "gemm.h"
#include "kernels.h"
#include "op_args.h"
#include "tensor.h"

namespace infomax_ext {
namespace {

using Tensors = std::vector<Tensor>;
using OptionalTensors = std::vector<std::optional<Tensor>>;
using Names = std::vector<std::string>;

// ---------------------------------------------------------------------------------- devices

Tensor activation_forward_on_device(const Tensor& pre, const std::optional<Tensor>& bias,
                                    Activation act, double param, bool keep_pre) {
#ifdef USE_CUDA
  if (pre.is_cuda()) return activation_forward_cuda(pre, bias, act, param, keep_pre);
#endif
  INFOMAX_CHECK(pre.is_cpu(), "infomax_ext: critic_mlp has no kernel for device ", device_of(pre));
  return activation_forward_cpu(pre, bias, act, param, keep_pre);
}

Tensor activation_backward_on_device(const Tensor& grad, const Tensor& at, Activation act,
                                     double param, bool want_bias) {
#ifdef USE_CUDA
  if (grad.is_cuda()) return activation_backward_cuda(grad, at, act, param, want_bias);
#endif
  return activation_backward_cpu(grad, at, act, param, want_bias);
}

std::tuple<Tensor, Tensor, Tensor> critic_head_on_device(const Tensor& hidden, const Tensor& weight,
                                                      const std::optional<Tensor>& bias,
                                                      int64_t n_joint, std::string_view act,
                                                      double param) {
#ifdef USE_CUDA
  if (hidden.is_cuda()) return critic_head_cuda(hidden, weight, bias, n_joint, act, param);
#endif
  return critic_head_cpu(hidden, weight, bias, n_joint, act, param);
}

std::tuple<Tensor, Tensor, Tensor> critic_head_backward_on_device(
    const Tensor& grad_bound, const std::optional<Tensor>& grad_scores, const Tensor& hidden,
    const Tensor& weight, const Tensor& scores, const Tensor& pre, int64_t n_joint,
    std::string_view act, double param, const std::vector<bool>& mask) {
#ifdef USE_CUDA
  if (hidden.is_cuda()) {
    return critic_head_backward_cuda(grad_bound, grad_scores, hidden, weight, scores, pre, n_joint,
                                  act, param, mask);
  }
#endif
  return critic_head_backward_cpu(grad_bound, grad_scores, hidden, weight, scores, pre, n_joint, act,
                               param, mask);
}

}  // namespace

// ---------------------------------------------------------------------------------- forward

std::tuple<Tensor, Tensor, Tensors, Tensors> critic_mlp_forward(
    const Tensor& hidden, const Tensors& weights, const OptionalTensors& biases,
    const Names& activations, const std::vector<double>& params, const Tensor& head_weight,
    const std::optional<Tensor>& head_bias, int64_t n_joint, std::string_view head_activation,
    double head_param) {
  const std::vector<Activation> acts = check_critic_mlp(
      hidden, weights, biases, activations, params, head_weight, head_bias, n_joint,
      std::string(head_activation));
  Tensors outputs, pres;
  Tensor h = as_contiguous(hidden);
  for (size_t l = 0; l < weights.size(); ++l) {
    const Activation act = acts[l];
    bool bias_added = false;
    Tensor y = linear_forward(h, as_contiguous(weights[l]), biases[l], &bias_added);
    const bool keep_pre = !derivative_from_output(act);
    // With keep_pre, y keeps the pre-activation (bias included) and out is a new tensor; else
    // the activation runs in place.
    const Tensor out = activation_forward_on_device(y, bias_added ? std::nullopt : biases[l], act,
                                                    params[l], keep_pre);
    pres.push_back(keep_pre ? y : empty_on(h, {0}));
    outputs.push_back(out);
    h = out;
  }
  auto [bound, scores, head_pre] =
      critic_head_on_device(h, head_weight, head_bias, n_joint, head_activation, head_param);
  pres.push_back(head_pre);
  return {bound, scores, outputs, pres};
}

std::tuple<Tensor, Tensor> critic_mlp(const Tensor& hidden, const Tensors& weights,
                                   const OptionalTensors& biases, const Names& activations,
                                   const std::vector<double>& params, const Tensor& head_weight,
                                   const std::optional<Tensor>& head_bias, int64_t n_joint,
                                   std::string_view head_activation, double head_param) {
  auto [bound, scores, outputs, pres] =
      critic_mlp_forward(hidden, weights, biases, activations, params, head_weight, head_bias,
                      n_joint, head_activation, head_param);
  return {bound, scores};
}

// --------------------------------------------------------------------------------- backward

// Gradients for output_mask = (hidden, weights..., biases..., head_weight, head_bias); outputs
// and pres are what critic_mlp_forward kept. A gradient not asked for is an empty tensor.
std::tuple<Tensor, Tensors, Tensors, Tensor, Tensor> critic_mlp_backward(
    const Tensor& grad_bound, const std::optional<Tensor>& grad_scores, const Tensor& hidden,
    const Tensors& weights, const OptionalTensors& biases, const Names& activations,
    const std::vector<double>& params, const Tensor& head_weight,
    const std::optional<Tensor>& head_bias, const Tensor& scores, const Tensors& outputs,
    const Tensors& pres, int64_t n_joint, std::string_view head_activation, double head_param,
    const std::vector<bool>& output_mask) {
  const std::vector<Activation> acts = check_critic_mlp(
      hidden, weights, biases, activations, params, head_weight, head_bias, n_joint,
      std::string(head_activation));
  check_critic_mlp_saved(hidden, weights, acts, scores, outputs, pres);
  const int64_t layers = static_cast<int64_t>(weights.size());
  const std::vector<bool> mask = checked_mask(output_mask, 2 * layers + 3);
  const bool want_hidden = mask[0];
  for (int64_t l = 0; l < layers; ++l) {
    INFOMAX_CHECK(biases[l].has_value() || !mask[1 + layers + l],
                  "infomax_ext: output_mask asks for the gradient of bias ", l,
                  ", which is absent");
  }
  INFOMAX_CHECK(head_bias.has_value() || !mask[2 + 2 * layers],
                "infomax_ext: output_mask asks for the gradient of head_bias, which is absent");
  // The gradient runs down to the lowest layer whose parameters (or hidden) need it.
  int64_t lowest = layers;
  for (int64_t l = layers - 1; l >= 0; --l) {
    if (mask[1 + l] || mask[1 + layers + l]) lowest = l;
  }
  if (want_hidden) lowest = 0;

  auto none = [&] { return empty_on(hidden, {0}); };
  // Filled below: a gradient computed, or an empty tensor where none is asked for (each its own).
  Tensors grad_weights(layers), grad_biases(layers);
  auto fill_absent = [&] {
    for (int64_t l = 0; l < layers; ++l) {
      if (!grad_weights[l].defined()) grad_weights[l] = none();
      if (!grad_biases[l].defined()) grad_biases[l] = none();
    }
  };
  const bool want_head_w = mask[1 + 2 * layers], want_head_b = mask[2 + 2 * layers];
  if (lowest == layers && !want_hidden && !want_head_w && !want_head_b) {
    fill_absent();
    return {none(), grad_weights, grad_biases, none(), none()};
  }
  const Tensor x0 = as_contiguous(hidden);
  const Tensor top = layers > 0 ? outputs[layers - 1] : x0;
  auto [g, grad_head_w, grad_head_b] = critic_head_backward_on_device(
      grad_bound, grad_scores, top, head_weight, scores, pres[layers], n_joint, head_activation,
      head_param, {lowest < layers || want_hidden, want_head_w, want_head_b});
  for (int64_t l = layers - 1; l >= lowest; --l) {
    const Activation act = acts[l];
    const bool want_w = mask[1 + l], want_b = mask[1 + layers + l];
    // g is this op's own buffer (the head's or a product's output): scaled by f' in place.
    Tensor grad_b = activation_backward_on_device(
        g, derivative_from_output(act) ? outputs[l] : pres[l], act, params[l], want_b);
    if (want_b) grad_biases[l] = grad_b;
    const Tensor& x = l > 0 ? outputs[l - 1] : x0;
    const bool down = l > lowest || want_hidden;
    if (want_w && down) {
      // The layer's input and weight gradients at once where that is faster (linear_grads).
      std::tie(g, grad_weights[l]) = linear_grads(g, x, as_contiguous(weights[l]));
    } else if (want_w) {
      grad_weights[l] = linear_weight_grad(g, x);
    } else if (down) {
      g = linear_input_grad(g, as_contiguous(weights[l]));
    }
  }
  fill_absent();
  return {want_hidden ? g : none(), grad_weights, grad_biases,
          want_head_w ? grad_head_w : none(), want_head_b ? grad_head_b : none()};
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CompositeExplicitAutograd, m) {
  m.impl("critic_mlp", TORCH_BOX(&critic_mlp));
  m.impl("critic_mlp_forward", TORCH_BOX(&critic_mlp_forward));
  m.impl("critic_mlp_backward", TORCH_BOX(&critic_mlp_backward));
}

}  // namespace infomax_ext
