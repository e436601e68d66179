// CUDA kernels of the paired first layer. Semantics are those of
// csrc/cpu/paired_first_layer_cpu.cpp; the per-element math comes from the shared headers, this
// file holds indexing and launches.
//   joint row r    : act(data_half[r % N] + latent_half[r]           + bias)
//   shuffled row r : act(data_half[r % N] + shuffled_half[perm[r]] + bias)
// Permutation entries are range-checked on the device (INFOMAX_KERNEL_ASSERT): no host sync.
// bfloat16 and float16: sums, activations and derivatives in float32 (opmath_t), each result
// rounded to the input dtype once.

#include <array>
#include <vector>

#include "../activations.h"
#include "../kernels.h"
#include "../op_args.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

// Data rows per chunk of the backward pass; each chunk writes one partial sum per column of the
// bias gradient. Fixed, so the reduction order never changes.
constexpr int64_t kDataRowsPerChunk = 16;

// ---------------------------------------------------------------------------------------------
// Paired first layer
// ---------------------------------------------------------------------------------------------

// Forward. data_half (N, H), latent_half (M, H), source (M, H): the shuffled source, bias (H),
// perm (M); out (2M, H). Block (kLanes, kRowGroups): one warp per row, lanes along columns.
template <Activation A, typename T>
__global__ void paired_first_layer_kernel(const T* data_half, const T* latent_half, const T* source, const T* bias,
                                          const int64_t* perm, int64_t n, int64_t m, int64_t h,
                                          opmath_t<T> param, T* out) {
  using op_t = opmath_t<T>;
  for (int64_t r = int64_t(blockIdx.x) * kRowGroups + threadIdx.y; r < m;
       r += int64_t(gridDim.x) * kRowGroups) {
    const int64_t k = perm[r];
    INFOMAX_KERNEL_ASSERT(k >= 0 && k < m && "infomax_ext: perm entry outside [0, M)");
    const T* ar = data_half + (r % n) * h;
    const T* br = latent_half + r * h;
    const T* cr = source + k * h;
    T* joint = out + r * h;
    T* shuffled = out + (m + r) * h;
    for (int64_t j = threadIdx.x; j < h; j += kLanes) {
      const op_t a = op_t(ar[j]), bj = op_t(bias[j]);
      joint[j] = T(activation_value<A>((a + op_t(br[j])) + bj, param));
      shuffled[j] = T(activation_value<A>((a + op_t(cr[j])) + bj, param));
    }
  }
}

// Backward. Thread (column j, chunk) walks data rows i of its chunk and, for each, the S latent
// rows r = s N + i in order s = 0..S-1, as the CPU kernel does:
//   g1 = grad_joint[r] act'(data_half[i] + latent_half[r] + bias)
//   g2 = grad_shuffled[r] act'(data_half[i] + source[perm[r]] + bias)
//   grad_data_half[i] = sum_s (g1 + g2)    grad_source[perm[r]] = g2
//   grad_latent_half[r] = g1 (+ the shuffled row
//   q = inverse_perm[r] that read latent row r, when there is no separate source)
// and writes its chunk's partial sum of grad_data_half rows for the bias gradient: partial (chunks, H).
// Any of grad_data_half, grad_latent_half, grad_source, bias_partial may be null (not requested).
// grad_out: (2M, H). With out (the layer's output (2M, H), for identity and relu) the derivative
// is read from it and data_half, latent_half, source and bias are not read (null).
template <Activation A, typename T, typename acc_t>
__global__ void paired_first_layer_backward_kernel(
    const T* grad_out, const T* data_half, const T* latent_half, const T* source, const T* bias,
    const T* out, const int64_t* perm, const int64_t* inverse_perm, bool has_source, int64_t n,
    int64_t m, int64_t h, opmath_t<T> param, T* grad_data_half, T* grad_latent_half,
    T* grad_source, acc_t* bias_partial) {
  using op_t = opmath_t<T>;
  const int64_t j = int64_t(blockIdx.y) * kLanes + threadIdx.x;
  const int64_t chunk = int64_t(blockIdx.x) * kRowGroups + threadIdx.y;
  const int64_t i_begin = chunk * kDataRowsPerChunk;
  if (j >= h || i_begin >= n) return;
  const int64_t i_end = i_begin + kDataRowsPerChunk < n ? i_begin + kDataRowsPerChunk : n;
  const int64_t s_count = m / n;
  const op_t bias_j = out ? op_t(0) : op_t(bias[j]);
  acc_t bias_sum = 0;
  for (int64_t i = i_begin; i < i_end; ++i) {
    const op_t ai = out ? op_t(0) : op_t(data_half[i * h + j]);
    acc_t row_sum = 0;
    for (int64_t s = 0; s < s_count; ++s) {
      const int64_t r = s * n + i;
      const int64_t k = perm[r];
      INFOMAX_KERNEL_ASSERT(k >= 0 && k < m && "infomax_ext: perm entry outside [0, M)");
      const op_t br = out ? op_t(0) : op_t(latent_half[r * h + j]);
      const op_t x1 = out ? op_t(out[r * h + j]) : (ai + br) + bias_j;
      const op_t x2 = out ? op_t(out[(m + r) * h + j]) : (ai + op_t(source[k * h + j])) + bias_j;
      const op_t g1 = activation_grad<A>(op_t(grad_out[r * h + j]), x1, param);
      const op_t g2 = activation_grad<A>(op_t(grad_out[(m + r) * h + j]), x2, param);
      row_sum += acc_t(g1) + acc_t(g2);
      if (grad_source) grad_source[k * h + j] = T(g2);
      if (grad_latent_half) {
        op_t grad = g1;
        if (!has_source) {
          const int64_t q = inverse_perm[r];
          INFOMAX_KERNEL_ASSERT(q >= 0 && q < m && "infomax_ext: inverse_perm entry outside [0, M)");
          const op_t xq = out ? op_t(out[(m + q) * h + j])
                              : (op_t(data_half[(q % n) * h + j]) + br) + bias_j;
          grad += activation_grad<A>(op_t(grad_out[(m + q) * h + j]), xq, param);
        }
        grad_latent_half[r * h + j] = T(grad);
      }
    }
    if (grad_data_half) grad_data_half[i * h + j] = static_cast<T>(row_sum);
    bias_sum += row_sum;
  }
  if (bias_partial) bias_partial[chunk * h + j] = bias_sum;
}

}  // namespace

Tensor paired_first_layer_cuda(const Tensor& data_half_in, const Tensor& latent_half_in,
                                   const std::optional<Tensor>& shuffled_source_in,
                                   const Tensor& bias_in, const Tensor& perm_in,
                                   std::string_view activation, double param) {
  const PairedFirstLayerArgs args(data_half_in, latent_half_in, shuffled_source_in, bias_in, perm_in,
                                  activation);
  const DeviceGuard guard(data_half_in);
  const Tensor &data_half = args.data_half, &latent_half = args.latent_half, &source = args.source, &bias = args.bias, &perm = args.perm;
  const Activation act = args.act;
  const int64_t n = args.n, h = args.h, m = args.m;
  Tensor out = empty_on(data_half, {2 * m, h});
  if (h == 0) return out;

  const dim3 block(kLanes, kRowGroups);
  const unsigned int grid = grid_size(m, kRowGroups);
  const cudaStream_t stream = guard.stream();
  dispatch_floating_and_reduced(data_half.scalar_type(), "paired_first_layer_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      paired_first_layer_kernel<A, scalar_t><<<grid, block, 0, stream>>>(
          data_half.const_data_ptr<scalar_t>(), latent_half.const_data_ptr<scalar_t>(), source.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(), n, m, h,
          static_cast<opmath_t<scalar_t>>(param), out.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
  });
  return out;
}

namespace {

// The backward kernel and the bias gradient's column sums, for both entries below. The inputs:
// the halves and the bias, or (out defined) the layer's output instead; undefined tensors are
// not read. Each gradient is written when wanted (want: data half, latent half, source, bias).
void launch_paired_backward(const Tensor& grad_out, const Tensor& data_half,
                            const Tensor& latent_half, const Tensor& source, const Tensor& bias,
                            const Tensor& out, const Tensor& perm, const Tensor& inverse_perm,
                            bool has_source, int64_t n, int64_t m, int64_t h, Activation act,
                            double param, const std::array<bool, 4>& want,
                            const std::array<Tensor, 4>& grads, cudaStream_t stream) {
  if (!(want[0] || want[1] || want[2] || want[3]) || h == 0) return;
  INFOMAX_CHECK((h + kLanes - 1) / kLanes <= 65535, "infomax_ext: paired_first_layer supports at most ",
                65535 * kLanes, " units on CUDA, got ", h);
  const int64_t chunks = (n + kDataRowsPerChunk - 1) / kDataRowsPerChunk;
  const dim3 block(kLanes, kRowGroups);
  const dim3 grid(static_cast<unsigned int>((chunks + kRowGroups - 1) / kRowGroups),
                  static_cast<unsigned int>((h + kLanes - 1) / kLanes));
  dispatch_floating_and_reduced(grad_out.scalar_type(), "paired_first_layer_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, true>;
    auto read = [](const Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
    auto write = [&](int k) { return want[k] ? grads[k].mutable_data_ptr<scalar_t>() : nullptr; };
    Tensor partial = want[3] ? empty_on(grad_out, {chunks, h}, scalar_type_of<acc_t>()) : Tensor();
    acc_t* ppartial = want[3] ? partial.mutable_data_ptr<acc_t>() : nullptr;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      paired_first_layer_backward_kernel<A, scalar_t, acc_t><<<grid, block, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), read(data_half), read(latent_half), read(source),
          read(bias), read(out), perm.const_data_ptr<int64_t>(),
          inverse_perm.const_data_ptr<int64_t>(), has_source, n, m, h,
          static_cast<opmath_t<scalar_t>>(param), write(0), write(1), write(2), ppartial);
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
    if (want[3]) {
      launch_column_sums<scalar_t, acc_t>(ppartial, chunks, h, write(3), stream);
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cuda(
    const Tensor& grad_out_in, const Tensor& data_half_in, const Tensor& latent_half_in,
    const std::optional<Tensor>& shuffled_source_in, const Tensor& bias_in,
    const Tensor& perm_in, const Tensor& inverse_perm_in, std::string_view activation,
    double param, const std::vector<bool>& output_mask) {
  const PairedFirstLayerBackwardArgs args(grad_out_in, data_half_in, latent_half_in,
                                          shuffled_source_in, bias_in, perm_in, inverse_perm_in,
                                          activation, output_mask);
  const DeviceGuard guard(data_half_in);
  launch_paired_backward(args.grad_out, args.data_half, args.latent_half, args.source, args.bias,
                         Tensor(), args.perm, args.inverse_perm, args.has_source, args.n, args.m,
                         args.h, args.act, param,
                         {args.want_data_half, args.want_latent_half, args.want_source,
                          args.want_bias},
                         {args.grad_data_half, args.grad_latent_half, args.grad_source,
                          args.grad_bias},
                         guard.stream());
  return args.grads();
}

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_from_output_cuda(
    const Tensor& grad_out_in, const Tensor& out_in, int64_t n, bool has_source,
    const Tensor& perm_in, const Tensor& inverse_perm_in, Activation act,
    const std::vector<bool>& want) {
  const DeviceGuard guard(out_in);
  const PairedFromOutputBackwardArgs args(grad_out_in, out_in, n, has_source, perm_in,
                                          inverse_perm_in, want);
  launch_paired_backward(args.grad_out, Tensor(), Tensor(), Tensor(), Tensor(), args.out,
                         args.perm, args.inverse_perm, has_source, args.n, args.m, args.h, act,
                         0.0, args.want, args.grads, guard.stream());
  return args.result();
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("paired_first_layer", TORCH_BOX(&paired_first_layer_cuda));
  m.impl("paired_first_layer_backward", TORCH_BOX(&paired_first_layer_backward_cuda));
}

}  // namespace infomax_ext
