#pragma once
// The MI chain's two halves as C++ functions, for the ops that run them (paired_linear.cpp,
// critic_mlp.cpp, each its schema in ops.cpp) and for critic_chain.cpp, which runs both in one
// call each way.
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "tensor.h"

namespace infomax_ext {

// The first Linear layer on joint and shuffled pairs: (out, data half or empty, latent half,
// shuffled codes' half or empty); paired_linear.cpp.
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_linear_forward(
    const Tensor& hx, const Tensor& hz, const std::optional<Tensor>& hz_shuffled,
    const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& perm,
    std::string_view activation, double param, const std::optional<Tensor>& data_half);

// Its gradients for output_mask = (hx, hz, hz_shuffled, weight, bias), empty where not asked.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> paired_linear_backward(
    const Tensor& grad_out, const Tensor& hx, const Tensor& hz,
    const std::optional<Tensor>& hz_shuffled, const Tensor& weight, const Tensor& data_half,
    const Tensor& latent_half, const std::optional<Tensor>& shuffled_half,
    const std::optional<Tensor>& bias, const Tensor& perm, std::string_view activation, double param,
    const std::vector<bool>& output_mask, const std::optional<Tensor>& out);

// The hidden layers and the head: (bound, scores, each layer's output, each layer's
// pre-activation or empty, then the head's); critic_mlp.cpp.
std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> critic_mlp_forward(
    const Tensor& hidden, const std::vector<Tensor>& weights,
    const std::vector<std::optional<Tensor>>& biases, const std::vector<std::string>& activations,
    const std::vector<double>& params, const Tensor& head_weight,
    const std::optional<Tensor>& head_bias, int64_t n_joint, std::string_view head_activation,
    double head_param);

// Their gradients for output_mask = (hidden, weights..., biases..., head_weight, head_bias).
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, Tensor, Tensor> critic_mlp_backward(
    const Tensor& grad_bound, const std::optional<Tensor>& grad_scores, const Tensor& hidden,
    const std::vector<Tensor>& weights, const std::vector<std::optional<Tensor>>& biases,
    const std::vector<std::string>& activations, const std::vector<double>& params,
    const Tensor& head_weight, const std::optional<Tensor>& head_bias, const Tensor& scores,
    const std::vector<Tensor>& outputs, const std::vector<Tensor>& pres, int64_t n_joint,
    std::string_view head_activation, double head_param, const std::vector<bool>& output_mask);

}  // namespace infomax_ext
