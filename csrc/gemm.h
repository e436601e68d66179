#pragma once
// The matrix products of a Linear layer y = x W^T + b, each through the fastest backend measured
// for it inside a chain call (bench/bench_gemm.py; bench/README.md, "GEMM backends"): on the CPU
// in float32 with a contiguous weight, a product of at least kOneDnnMinFlops runs on oneDNN's
// linear (mkldnn::_linear_pointwise, part of torch's CPU build) with the bias fused into its
// epilogue, for the forward and the input gradient (with AVX-512 level to 30% faster than MKL's
// sgemm there, e.g. the paper chain's 1000 -> 400 layer; under the AVX2 capability level or
// slower, which this choice does not detect). A smaller product (the Julia chain's 256 -> 256 layer at
// N = 64, the paper chain's 400 -> 100 at N <= 256) runs on MKL: with the caches holding the rest
// of a call, oneDNN's linear costs 20-60 us more per call than MKL's sgemm, more than its faster
// kernel saves on such a product. A strided weight, such as a column slice, never goes to
// oneDNN: it makes it hundreds of times slower. The weight gradient, and everything elsewhere
// (float64, CUDA, a torch without oneDNN), runs on aten::mm, whose kernel is MKL or cuBLAS. All
// through the dispatcher, so the stable ABI suffices.
#include <optional>
#include <string>
#include <vector>

#include "tensor.h"

namespace infomax_ext {

// The fewest FLOPs (2 x rows x in x out) of a product that oneDNN's linear serves: 2^26, e.g.
// 128 rows of a 512 -> 512 layer or 512 rows of a 256 -> 256 one. Measured on the chains' layers
// at 64-2048 rows, with AVX-512 and AVX2 (bench/README.md, "GEMM backends").
inline constexpr double kOneDnnMinFlops = 67108864.0;

// True when oneDNN's linear serves the product of x (R, in) and the weight w (out, in), or of
// the gradient x (R, out) and w^T: x a non-empty contiguous float32 CPU tensor, w contiguous and
// non-empty, 2 R (out x in) >= kOneDnnMinFlops, torch built with oneDNN (probed once).
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
