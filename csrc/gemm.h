#pragma once
// The matrix products of a Linear layer y = x W^T + b, each through the fastest backend measured
// for it (bench/bench_gemm.py; bench/README.md, "GEMM backends"): on the CPU in float32 with a
// contiguous weight, oneDNN's linear (mkldnn::_linear_pointwise, part of torch's CPU build) with
// the bias fused into its epilogue, for the forward and the input gradient (up to 30% faster
// than MKL's sgemm on the chains' shapes with AVX-512, level with AVX2; a strided weight, such as
// a column slice, makes it hundreds of times slower, so it never gets one); the weight
// gradient, and everything elsewhere (float64,
// CUDA, a torch without oneDNN), on aten::mm, whose kernel is MKL or cuBLAS. All through the
// dispatcher, so the stable ABI suffices.
#include <optional>
#include <string>
#include <vector>

#include "tensor.h"

namespace infomax_ext {

// True when oneDNN's linear serves the product of x and the weight w: x a non-empty contiguous
// float32 CPU tensor, w contiguous and non-empty, torch built with oneDNN (probed once).
bool onednn_linear_serves(const Tensor& x, const Tensor& w);

// x W^T (+ b) for x (R, in), w (out, in), b (out) optional; *bias_added says whether the bias is
// in (oneDNN adds it in its epilogue; otherwise the caller's activation pass adds it). The
// activation is never fused: oneDNN's ReLU epilogue maps NaN to 0, where torch keeps NaN.
Tensor linear_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b,
                      bool* bias_added);

// g W for g (R, out), w (out, in): the input gradient, (R, in).
Tensor linear_input_grad(const Tensor& g, const Tensor& w);

// g^T x for g (R, out), x (R, in): the weight gradient, (out, in) contiguous.
Tensor linear_weight_grad(const Tensor& g, const Tensor& x);

}  // namespace infomax_ext
