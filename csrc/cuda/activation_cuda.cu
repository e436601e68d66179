// CUDA kernels of the hidden layers of critic_mlp (csrc/critic_mlp.cpp), the semantics of
// csrc/cpu/activation_cpu.cpp: an activation applied to a (rows, H) pre-activation, and its
// backward fused with the bias gradient (grad *= f' in place and per-chunk column sums in the
// same pass, then an ordered sum over the chunks: deterministic). bfloat16 and float16 are
// computed on in float32 (opmath_t) and rounded once when stored.
#include "../activations.h"
#include "../kernels.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

constexpr int64_t kRowsPerChunk = 32;

// x = pre + bias (written back when keep_pre), out = act(x); one thread per element.
template <Activation A, typename T>
__global__ void activation_forward_kernel(T* pre, const T* bias, int64_t n, int64_t h,
                                          opmath_t<T> param, bool keep_pre, T* out) {
  using op_t = opmath_t<T>;
  INFOMAX_GRID_STRIDE_LOOP(i, n) {
    const T x = bias ? T(op_t(pre[i]) + op_t(bias[i % h])) : pre[i];
    if (keep_pre) pre[i] = x;
    out[i] = T(activation_value<A>(op_t(x), param));
  }
}

// grid (column blocks of kLanes, chunk groups of kRowGroups); each thread owns one column of
// one chunk of rows.
template <Activation A, typename T, typename acc_t>
__global__ void activation_backward_kernel(T* grad, const T* at, int64_t rows, int64_t h,
                                           opmath_t<T> param, acc_t* partial) {
  using op_t = opmath_t<T>;
  const int64_t j = int64_t(blockIdx.y) * kLanes + threadIdx.x;
  const int64_t chunk = int64_t(blockIdx.x) * kRowGroups + threadIdx.y;
  const int64_t first = chunk * kRowsPerChunk;
  if (j >= h || first >= rows) return;
  const int64_t last = first + kRowsPerChunk < rows ? first + kRowsPerChunk : rows;
  acc_t sum = 0;
  for (int64_t r = first; r < last; ++r) {
    const T g = T(activation_grad<A>(op_t(grad[r * h + j]), op_t(at[r * h + j]), param));
    grad[r * h + j] = g;
    sum += acc_t(g);
  }
  if (partial) partial[chunk * h + j] = sum;
}

}  // namespace

Tensor activation_forward_cuda(const Tensor& pre, const std::optional<Tensor>& bias,
                               Activation act, double param, bool keep_pre) {
  const DeviceGuard guard(pre);
  const bool has_bias = bias.has_value();
  if (!has_bias && act == Activation::Identity) return pre;
  Tensor out = keep_pre && act != Activation::Identity ? empty_like_shape(pre) : pre;
  const int64_t n = pre.numel(), h = pre.size(1);
  if (n == 0) return out;
  const cudaStream_t stream = guard.stream();
  dispatch_floating_and_reduced(pre.scalar_type(), "critic_mlp", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      activation_forward_kernel<A, scalar_t><<<grid_size(n, 4 * kThreads), kThreads, 0, stream>>>(
          pre.mutable_data_ptr<scalar_t>(), has_bias ? bias->const_data_ptr<scalar_t>() : nullptr,
          n, h, static_cast<opmath_t<scalar_t>>(param), keep_pre && out.data_ptr() != pre.data_ptr(),
          out.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
  });
  return out;
}

Tensor activation_backward_cuda(const Tensor& grad, const Tensor& at, Activation act, double param,
                                bool want_bias) {
  const DeviceGuard guard(grad);
  const int64_t rows = grad.size(0), h = grad.size(1);
  Tensor bias_grad = want_bias ? empty_on(grad, {h}) : empty_on(grad, {0});
  if (rows == 0 || h == 0 || (act == Activation::Identity && !want_bias)) return bias_grad;
  INFOMAX_CHECK((h + kLanes - 1) / kLanes <= 65535, "infomax_ext: critic_mlp supports at most ",
                65535 * kLanes, " hidden units per layer on CUDA, got ", h);
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const dim3 block(kLanes, kRowGroups);
  const dim3 grid(static_cast<unsigned int>((chunks + kRowGroups - 1) / kRowGroups),
                  static_cast<unsigned int>((h + kLanes - 1) / kLanes));
  const cudaStream_t stream = guard.stream();
  dispatch_floating_and_reduced(grad.scalar_type(), "critic_mlp", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, true>;
    Tensor partial = want_bias ? empty_on(grad, {chunks, h}, scalar_type_of<acc_t>()) : Tensor();
    acc_t* pp = want_bias ? partial.mutable_data_ptr<acc_t>() : nullptr;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      activation_backward_kernel<A, scalar_t, acc_t><<<grid, block, 0, stream>>>(
          grad.mutable_data_ptr<scalar_t>(), at.const_data_ptr<scalar_t>(), rows, h,
          static_cast<opmath_t<scalar_t>>(param), pp);
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
    if (want_bias) {
      launch_column_sums<scalar_t, acc_t>(pp, chunks, h, bias_grad.mutable_data_ptr<scalar_t>(),
                                          stream);
    }
  });
  return bias_grad;
}

}  // namespace infomax_ext
