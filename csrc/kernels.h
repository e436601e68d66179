#pragma once
// The device kernels that csrc/paired_linear.cpp and csrc/critic_mlp.cpp call directly (no second trip through the
// dispatcher; every argument error is caught before them). Each is also registered as its op's
// CPU or CUDA kernel.
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "activations.h"
#include "tensor.h"

namespace infomax_ext {

Tensor paired_first_layer_cpu(const Tensor& data_half, const Tensor& latent_half,
                              const std::optional<Tensor>& shuffled_half, const Tensor& bias,
                              const Tensor& perm, std::string_view activation, double param);
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cpu(
    const Tensor& grad_out, const Tensor& data_half, const Tensor& latent_half,
    const std::optional<Tensor>& shuffled_half, const Tensor& bias, const Tensor& perm,
    const Tensor& inverse_perm, std::string_view activation, double param,
    const std::vector<bool>& output_mask);
Tensor inverse_permutation_cpu(const Tensor& perm);
// paired_first_layer_backward for identity and relu with the derivative read from the layer's
// output out (2M, H) instead of recomputed from the halves (which need not be kept): the same
// four gradients (data half, latent half, source, bias) for want = the op's output_mask. n: the
// data rows; M = perm's length. Arguments checked by the caller.
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_from_output_cpu(
    const Tensor& grad_out, const Tensor& out, int64_t n, bool has_source, const Tensor& perm,
    const Tensor& inverse_perm, Activation act, const std::vector<bool>& want);
std::tuple<Tensor, Tensor, Tensor> critic_head_cpu(const Tensor& hidden, const Tensor& weight,
                                                const std::optional<Tensor>& bias, int64_t n_joint,
                                                std::string_view activation, double param);
std::tuple<Tensor, Tensor, Tensor> critic_head_backward_cpu(
    const Tensor& grad_bound, const std::optional<Tensor>& grad_scores, const Tensor& hidden,
    const Tensor& weight, const Tensor& scores, const Tensor& pre, int64_t n_joint,
    std::string_view activation, double param, const std::vector<bool>& output_mask);
// The hidden layers of critic_mlp (not ops of their own; contiguous (rows, H) arguments).
// activation_forward: pre += bias in place, then act(pre): in place (the result is pre) unless
// keep_pre, which writes a new tensor and leaves pre (with the bias) for the backward.
// activation_backward: grad *= act'(at) in place (at: the pre-activation, or the output for
// identity and relu), returning the column sums of the result (the bias gradient, (H)) when
// want_bias, else an empty tensor.
Tensor activation_forward_cpu(const Tensor& pre, const std::optional<Tensor>& bias,
                              Activation act, double param, bool keep_pre);
Tensor activation_backward_cpu(const Tensor& grad, const Tensor& at, Activation act, double param,
                               bool want_bias);

#ifdef USE_CUDA
Tensor paired_first_layer_cuda(const Tensor& data_half, const Tensor& latent_half,
                               const std::optional<Tensor>& shuffled_half, const Tensor& bias,
                               const Tensor& perm, std::string_view activation, double param);
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cuda(
    const Tensor& grad_out, const Tensor& data_half, const Tensor& latent_half,
    const std::optional<Tensor>& shuffled_half, const Tensor& bias, const Tensor& perm,
    const Tensor& inverse_perm, std::string_view activation, double param,
    const std::vector<bool>& output_mask);
Tensor inverse_permutation_cuda(const Tensor& perm);
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_from_output_cuda(
    const Tensor& grad_out, const Tensor& out, int64_t n, bool has_source, const Tensor& perm,
    const Tensor& inverse_perm, Activation act, const std::vector<bool>& want);
std::tuple<Tensor, Tensor, Tensor> critic_head_cuda(const Tensor& hidden, const Tensor& weight,
                                                 const std::optional<Tensor>& bias, int64_t n_joint,
                                                 std::string_view activation, double param);
std::tuple<Tensor, Tensor, Tensor> critic_head_backward_cuda(
    const Tensor& grad_bound, const std::optional<Tensor>& grad_scores, const Tensor& hidden,
    const Tensor& weight, const Tensor& scores, const Tensor& pre, int64_t n_joint,
    std::string_view activation, double param, const std::vector<bool>& output_mask);
Tensor activation_forward_cuda(const Tensor& pre, const std::optional<Tensor>& bias,
                               Activation act, double param, bool keep_pre);
Tensor activation_backward_cuda(const Tensor& grad, const Tensor& at, Activation act, double param,
                                bool want_bias);
#endif

}  // namespace infomax_ext
