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
#include <thread>
#include <utility>
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

// Gradient mode off in this thread for the guard's lifetime (the stable ABI's view of
// torch.no_grad), restored after.
class GradModeOff {
 public:
  GradModeOff() : was_(aoti_torch_grad_mode_is_enabled()) { aoti_torch_grad_mode_set_enabled(false); }
  ~GradModeOff() { aoti_torch_grad_mode_set_enabled(was_); }
  GradModeOff(const GradModeOff&) = delete;
  GradModeOff& operator=(const GradModeOff&) = delete;

 private:
  bool was_;
};

// Whether side_by_side runs its two products at once: CPU tensors and exactly two intra-op
// threads (more threads would leave all but two idle; inside a parallel region the two run one
// after the other anyway).
inline bool products_side_by_side(const Tensor& t) {
  return t.is_cpu() && torch::stable::get_num_threads() == 2;
}

// Runs `here()` and `there()`, two independent products, at once on the two intra-op threads,
// one thread each, where products_side_by_side(like) holds; otherwise one after the other.
// With two threads that is faster than each product on both threads in turn (MKL's split of
// one product costs more than it gains at these sizes): the chains' backward pairs (weight
// and input gradient of one layer) timed alone 1-6% faster for T's 256 -> 256 layer and 3-21%
// for the others at 64-1024 rows (bench/README.md, "Two products at once"). `here()` runs on
// the calling thread, with its thread-local state (it may write into a caller's tensor);
// `there()` on a pool thread, whose thread-local state is the default, with gradient mode
// turned off: it must only read its inputs and return new tensors (through what it captures),
// as an inference tensor is not written outside inference mode. The two must not write the
// same tensor.
template <class Here, class There>
void side_by_side(const Tensor& like, const Here& here, const There& there) {
  if (!products_side_by_side(like)) {
    here();
    there();
    return;
  }
  // OpenMP gives task 0 to the calling thread; should a pool thread get it, `here()` waits for
  // the calling thread after the other.
  const std::thread::id caller = std::this_thread::get_id();
  bool here_done = false;
  torch::stable::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i == 1) {
        GradModeOff no_grad;
        there();
      } else if (std::this_thread::get_id() == caller) {
        here();
        here_done = true;
      }
    }
  });
  if (!here_done) here();
}

// A Linear layer's input and weight gradients, (g W, g^T x) for g (R, out), x (R, in), w (out,
// in), computed side by side (side_by_side): linear_input_grad on the calling thread,
// linear_weight_grad on the other.
std::pair<Tensor, Tensor> linear_grads(const Tensor& g, const Tensor& x, const Tensor& w);

// (a b, c d): two independent matrix products, side by side (side_by_side: at once on the two
// intra-op threads where products_side_by_side(a) holds, a b on the calling thread). The
// latent columns' narrow products of paired_linear run this way: with K or the output 10
// wide, MKL's split of one product over two threads runs it slower than one thread does
// (bench/README.md, "Two products at once").
std::pair<Tensor, Tensor> mm_pair(const Tensor& a, const Tensor& b, const Tensor& c,
                                  const Tensor& d);

}  // namespace infomax_ext
