#pragma once
// The matrix products of a Linear layer y = x W^T + b, each through the fastest backend measured
// for it (bench/README.md, "GEMM backends"): on the CPU in float32 with a contiguous weight,
// oneDNN's linear (mkldnn::_linear_pointwise, part of torch's CPU build) with the bias and a
// ReLU fused into its epilogue, for the forward and the input gradient (8-30% faster than MKL's
// sgemm on the chains' shapes; a strided weight, such as a column slice, makes it hundreds of
// times slower, so it never gets one); the weight gradient, and everything elsewhere (float64,
// CUDA, a torch without oneDNN), on aten::mm, whose kernel is MKL or cuBLAS. All through the
// dispatcher, so the stable ABI suffices.
#include <optional>
#include <string>
#include <vector>

#include "tensor.h"

namespace infomax_ext {

// True when oneDNN's linear serves x (a float32 CPU tensor, torch built with oneDNN).
bool onednn_linear_serves(const Tensor& x);

// x W^T + b (b optional) for x (R, in), w (out, in): with ReLU applied when relu and the
// backend fuses it (*relu_applied says whether it did; the caller applies it otherwise).
// Without fusion the bias is not added either (*bias_added = false): the caller's activation
// pass adds it.
Tensor linear_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b, bool relu,
                      bool* bias_added, bool* relu_applied);

// g W for g (R, out), w (out, in): the input gradient, (R, in).
Tensor linear_input_grad(const Tensor& g, const Tensor& w);

// g^T x for g (R, out), x (R, in): the weight gradient, (out, in) contiguous.
Tensor linear_weight_grad(const Tensor& g, const Tensor& x);

}  // namespace infomax_ext
