#pragma once
// The device kernels that csrc/paired_linear.cpp calls directly (no second trip through the
// dispatcher; every argument error is caught before them). Each is also registered as its op's
// CPU or CUDA kernel.
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "tensor.h"

namespace infomax_ext {

Tensor paired_first_layer_cpu(const Tensor& data_half, const Tensor& latent_half,
                              const std::optional<Tensor>& shuffled_source, const Tensor& bias,
                              const Tensor& perm, std::string_view activation, double param);
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cpu(
    const Tensor& grad_out, const Tensor& data_half, const Tensor& latent_half,
    const std::optional<Tensor>& shuffled_source, const Tensor& bias, const Tensor& perm,
    const Tensor& inverse_perm, std::string_view activation, double param,
    const std::vector<bool>& output_mask);
Tensor inverse_permutation_cpu(const Tensor& perm);

#ifdef USE_CUDA
Tensor paired_first_layer_cuda(const Tensor& data_half, const Tensor& latent_half,
                               const std::optional<Tensor>& shuffled_source, const Tensor& bias,
                               const Tensor& perm, std::string_view activation, double param);
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cuda(
    const Tensor& grad_out, const Tensor& data_half, const Tensor& latent_half,
    const std::optional<Tensor>& shuffled_source, const Tensor& bias, const Tensor& perm,
    const Tensor& inverse_perm, std::string_view activation, double param,
    const std::vector<bool>& output_mask);
Tensor inverse_permutation_cuda(const Tensor& perm);
#endif

}  // namespace infomax_ext
