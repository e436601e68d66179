// critic_chain_forward / critic_chain_backward: the MI chain from its first Linear layer to the
// NWJ bound in one call each way, what python/infomax_ext/critic_chain_op.py's autograd node
// runs: paired_linear_forward then critic_mlp_forward, and critic_mlp_backward then
// paired_linear_backward (chain_parts.h), called here as C++ functions: one call from Python
// each way instead of four forward and up to ten backward, each with its arguments parsed and
// its results wrapped in Python (bench/fixed_cost_notes.md, "Fourteenth session").
//
// With data_weight and latent_weight given ("linear ends": the chain's data and latent networks
// are single Linear layers), hx and hz are the layers' inputs x (N, Dx_in) and z (M, Dz_in); the
// forward computes hx = x Wd^T + bd and hz = z Wl^T + bl itself and the backward returns the two
// layers' gradients. Device-agnostic (CompositeExplicitAutograd), as the parts.
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "chain_parts.h"
#include "checks.h"
#include "op_args.h"
#include "tensor.h"

namespace infomax_ext {
namespace {

using Tensors = std::vector<Tensor>;
using OptionalTensors = std::vector<std::optional<Tensor>>;
using Names = std::vector<std::string>;

Tensor linear(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  return call_op("aten::linear", "", x, weight, bias);
}

// The head weight as critic_mlp takes it: (H,), from the head Linear's own (1, H) or (H,).
Tensor head_vector(const Tensor& head_weight) {
  return head_weight.dim() == 1 ? head_weight
                                : torch::stable::reshape(head_weight, {head_weight.numel()});
}

// The sums over rows of g (R, C): a bias gradient, (C).
Tensor column_sums(const Tensor& g) {
  const int64_t dim[1] = {0};
  return torch::stable::sum(g, torch::headeronly::IntHeaderOnlyArrayRef(dim, 1));
}

void check_ends(const std::optional<Tensor>& data_weight,
                const std::optional<Tensor>& latent_weight) {
  INFOMAX_CHECK(data_weight.has_value() == latent_weight.has_value(),
                "infomax_ext: critic_chain takes data_weight and latent_weight together (the "
                "chain's single-Linear data and latent layers) or neither");
}

// (bound, scores, kept): kept = [hx, hz (computed with linear ends, else empty), the first
// layer's output, its data half (empty when data_half was given), its latent half, the shuffled
// codes' half (empty without hz_shuffled), each hidden layer's output, each pre-activation
// critic_mlp_forward keeps (empty where it keeps none), the head's pre-activation].
std::tuple<Tensor, Tensor, Tensors> critic_chain_forward(
    const Tensor& hx_in, const Tensor& hz_in, const std::optional<Tensor>& hz_shuffled,
    const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& perm,
    std::string_view activation, double param, const std::optional<Tensor>& data_half,
    const Tensors& weights, const OptionalTensors& biases, const Names& activations,
    const std::vector<double>& params, const Tensor& head_weight,
    const std::optional<Tensor>& head_bias, int64_t n_joint, std::string_view head_activation,
    double head_param, const std::optional<Tensor>& data_weight,
    const std::optional<Tensor>& data_bias, const std::optional<Tensor>& latent_weight,
    const std::optional<Tensor>& latent_bias) {
  check_ends(data_weight, latent_weight);
  const bool ends = data_weight.has_value();
  const Tensor hx = ends ? linear(hx_in, *data_weight, data_bias) : hx_in;
  const Tensor hz = ends ? linear(hz_in, *latent_weight, latent_bias) : hz_in;
  auto [hidden, data, latent, source] = paired_linear_forward(
      hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half);
  auto [bound, scores, outputs, pres] =
      critic_mlp_forward(hidden, weights, biases, activations, params, head_vector(head_weight),
                         head_bias, n_joint, head_activation, head_param);
  Tensors kept = {ends ? hx : empty_on(weight, {0}), ends ? hz : empty_on(weight, {0}), hidden,
                  data, latent, source};
  kept.insert(kept.end(), outputs.begin(), outputs.end());
  kept.insert(kept.end(), pres.begin(), pres.end());
  return {bound, scores, kept};
}

// The gradients of the node's differentiable inputs, in this order (output_mask says which are
// wanted; an empty tensor stands for each one not wanted):
//   without linear ends: hx, hz, hz_shuffled, weight, bias, head_weight, head_bias;
//   with linear ends:    x, data_weight, data_bias, z, latent_weight, latent_bias, weight, bias,
//                        head_weight, head_bias;
// then each hidden layer's weight and each present hidden bias. With linear ends, hz_shuffled
// is hz itself when the shuffled codes are z's own values (constants for z: their gradient goes
// to the latent layer's parameters only) and absent otherwise. halves: the first layer's data,
// latent and (with hz_shuffled) shuffled halves, read unless its activation's derivative comes
// from its output (identity, relu), when the node keeps none.
Tensors critic_chain_backward(
    const std::optional<Tensor>& grad_bound_in, const std::optional<Tensor>& grad_scores,
    const Tensor& hx, const Tensor& hz, const std::optional<Tensor>& hz_shuffled,
    const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& perm,
    std::string_view activation, double param, const Tensor& hidden, const Tensors& halves,
    const Tensors& weights, const OptionalTensors& biases, const Names& activations,
    const std::vector<double>& params, const Tensor& head_weight,
    const std::optional<Tensor>& head_bias, const Tensor& scores, const Tensors& outputs,
    const Tensors& pres, int64_t n_joint, std::string_view head_activation, double head_param,
    const std::optional<Tensor>& x, const std::optional<Tensor>& z,
    const std::optional<Tensor>& data_weight, const std::optional<Tensor>& latent_weight,
    const std::vector<bool>& output_mask) {
  check_ends(data_weight, latent_weight);
  const bool ends = data_weight.has_value();
  INFOMAX_CHECK(!ends || (x.has_value() && z.has_value()),
                "infomax_ext: critic_chain_backward with linear ends needs x and z");
  const size_t layers = weights.size();
  INFOMAX_CHECK(biases.size() == layers,
                "infomax_ext: critic_chain_backward takes one bias (or None) per hidden weight, got ",
                biases.size(), " biases for ", layers, " weights");
  size_t present = 0;
  for (const auto& b : biases) present += b.has_value();
  const size_t head_at = ends ? 8 : 5, base = head_at + 2;
  const std::vector<bool> mask = checked_mask(output_mask, base + layers + present);

  const bool need_hx = ends ? (mask[0] || mask[1] || mask[2]) : mask[0];
  const bool need_hz = ends ? (mask[3] || mask[4] || mask[5]) : mask[1];
  const bool need_source =
      hz_shuffled.has_value() && (ends ? (mask[4] || mask[5]) : mask[2]);
  const size_t w_at = ends ? 6 : 3;
  const std::vector<bool> first_need = {need_hx, need_hz, need_source, mask[w_at], mask[w_at + 1]};
  const bool need_first = need_hx || need_hz || need_source || mask[w_at] || mask[w_at + 1];

  std::vector<bool> mlp_mask(2 * layers + 3, false);
  mlp_mask[0] = need_first;
  size_t k = base + layers;
  for (size_t l = 0; l < layers; ++l) {
    mlp_mask[1 + l] = mask[base + l];
    if (biases[l].has_value()) mlp_mask[1 + layers + l] = mask[k++];
  }
  mlp_mask[1 + 2 * layers] = mask[head_at];
  mlp_mask[2 + 2 * layers] = head_bias.has_value() && mask[head_at + 1];

  Tensors grads(mask.size());
  auto fill_absent = [&] {
    for (auto& g : grads) {
      if (!g.defined()) g = empty_on(hidden, {0});
    }
  };
  const Tensor grad_bound =
      grad_bound_in.has_value()
          ? *grad_bound_in
          : torch::stable::new_zeros(hidden, {}, bound_scalar_type(hidden.scalar_type()));
  auto [g_hidden, g_weights, g_biases, g_head_w, g_head_b] = critic_mlp_backward(
      grad_bound, grad_scores, hidden, weights, biases, activations, params,
      head_vector(head_weight), head_bias, scores, outputs, pres, n_joint, head_activation,
      head_param, mlp_mask);
  if (mlp_mask[1 + 2 * layers]) {
    grads[head_at] = head_weight.dim() == 1 ? g_head_w
                                            : torch::stable::view(g_head_w, head_weight.sizes());
  }
  if (mlp_mask[2 + 2 * layers]) grads[head_at + 1] = g_head_b;
  k = base + layers;
  for (size_t l = 0; l < layers; ++l) {
    if (mask[base + l]) grads[base + l] = g_weights[l];
    if (biases[l].has_value()) {
      if (mask[k]) grads[k] = g_biases[l];
      ++k;
    }
  }
  if (!need_first) {
    fill_absent();
    return grads;
  }
  const bool from_output = derivative_from_output(checked_activation(std::string(activation)));
  INFOMAX_CHECK(from_output || halves.size() == (hz_shuffled.has_value() ? 3u : 2u),
                "infomax_ext: critic_chain_backward needs the first layer's halves (data, latent",
                hz_shuffled.has_value() ? ", shuffled" : "", ") for activation '", activation,
                "', got ", halves.size(), " tensors");
  auto [g_hx, g_hz, g_source, g_w, g_b] = paired_linear_backward(
      g_hidden, hx, hz, hz_shuffled, weight, from_output ? hidden : halves[0],
      from_output ? hidden : halves[1],
      hz_shuffled.has_value() ? std::optional<Tensor>(from_output ? hidden : halves[2])
                              : std::nullopt,
      bias, perm, activation, param, first_need,
      from_output ? std::optional<Tensor>(hidden) : std::nullopt);
  g_hidden = Tensor();
  if (mask[w_at]) grads[w_at] = g_w;
  if (mask[w_at + 1]) grads[w_at + 1] = g_b;
  if (!ends) {
    if (mask[0]) grads[0] = g_hx;
    if (mask[1]) grads[1] = g_hz;
    if (mask[2] && hz_shuffled.has_value()) grads[2] = g_source;
  } else {
    if (mask[0]) grads[0] = mm(g_hx, *data_weight);
    if (mask[1]) grads[1] = mm(t(g_hx), *x);
    if (mask[2]) grads[2] = column_sums(g_hx);
    if (need_hz) {
      // The latent layer's parameters get both rows' gradients; z only the joint rows'.
      const Tensor g_codes =
          need_source ? torch::stable::subtract(g_hz, g_source, -1.0) : g_hz;
      if (mask[3]) grads[3] = mm(g_hz, *latent_weight);
      if (mask[4]) grads[4] = mm(t(g_codes), *z);
      if (mask[5]) grads[5] = column_sums(g_codes);
    }
  }
  fill_absent();
  return grads;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CompositeExplicitAutograd, m) {
  m.impl("critic_chain_forward", TORCH_BOX(&critic_chain_forward));
  m.impl("critic_chain_backward", TORCH_BOX(&critic_chain_backward));
}

}  // namespace infomax_ext
