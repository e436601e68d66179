// CUDA kernels of the seeded permutation (keys, inverse) and of the paired first layer it feeds.
// Semantics are those of csrc/cpu/permutation_cpu.cpp and csrc/cpu/paired_first_layer_cpu.cpp;
// the per-element math comes from the shared headers, this file holds indexing and launches.
//   joint row r    : act(data_half[r % N] + latent_half[r]           + bias)
//   shuffled row r : act(data_half[r % N] + shuffled_source[perm[r]] + bias)
// Permutation entries are range-checked on the device (CUDA_KERNEL_ASSERT): no host sync.

#include <vector>

#include "../activations.h"
#include "../op_args.h"
#include "../permutation.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

// Data rows per chunk of the backward pass; each chunk writes one partial sum per column of the
// bias gradient. Fixed, so the reduction order never changes.
constexpr int64_t kDataRowsPerChunk = 16;

// ---------------------------------------------------------------------------------------------
// Permutation
// ---------------------------------------------------------------------------------------------

// keys[e] = permutation_key(seed, index[e]) for e < numel.
__global__ void permutation_keys_kernel(const int64_t* index, int64_t numel, uint64_t seed,
                                        int64_t* keys) {
  INFOMAX_GRID_STRIDE_LOOP(e, numel) {
    keys[e] = permutation_key(seed, static_cast<uint64_t>(index[e]));
  }
}

// inverse[perm[i]] = i for i < n; inverse starts filled with -1, so a repeated entry finds its
// slot taken (integer compare-and-swap: the result of a valid permutation is deterministic).
__global__ void inverse_permutation_kernel(const int64_t* perm, int64_t n, int64_t* inverse) {
  INFOMAX_GRID_STRIDE_LOOP(i, n) {
    const int64_t k = perm[i];
    INFOMAX_KERNEL_ASSERT(k >= 0 && k < n && "infomax_ext: perm entry outside [0, n)");
    if (k < 0 || k >= n) continue;
    const unsigned long long previous =
        atomicCAS(reinterpret_cast<unsigned long long*>(inverse + k), ~0ULL,
                  static_cast<unsigned long long>(i));
    INFOMAX_KERNEL_ASSERT(previous == ~0ULL && "infomax_ext: perm has a repeated entry");
    (void)previous;
  }
}

Tensor permutation_keys_cuda(const Tensor& index, int64_t seed) {
  INFOMAX_CHECK(index.scalar_type() == ScalarType::Long, "infomax_ext: index must be int64, got ",
              index.scalar_type());
  const DeviceGuard guard(index);
  const Tensor idx = as_contiguous(index);
  Tensor keys = empty_like_shape(idx);
  const int64_t numel = idx.numel();
  if (numel == 0) return keys;
  permutation_keys_kernel<<<grid_size(numel, kThreads), kThreads, 0,
                            guard.stream()>>>(
      idx.const_data_ptr<int64_t>(), numel, static_cast<uint64_t>(seed),
      keys.mutable_data_ptr<int64_t>());
  INFOMAX_CUDA_LAUNCH_CHECK();
  return keys;
}

Tensor inverse_permutation_cuda(const Tensor& perm) {
  INFOMAX_CHECK(perm.dim() == 1 && perm.scalar_type() == ScalarType::Long,
              "infomax_ext: perm must be a 1-D int64 tensor, got ", perm.scalar_type(), " of shape ",
              shape_of(perm));
  const DeviceGuard guard(perm);
  const Tensor p = as_contiguous(perm);
  const int64_t n = p.size(0);
  Tensor inverse = empty_on(p, {n});
  if (n == 0) return inverse;
  // Every byte 0xFF: each entry starts as -1 (~0ULL), the kernel's "slot free" mark.
  INFOMAX_CHECK(cudaMemsetAsync(inverse.mutable_data_ptr<int64_t>(), 0xFF, n * sizeof(int64_t),
                                guard.stream()) == cudaSuccess,
                "infomax_ext: cudaMemsetAsync failed");
  inverse_permutation_kernel<<<grid_size(n, kThreads), kThreads, 0,
                               guard.stream()>>>(
      p.const_data_ptr<int64_t>(), n, inverse.mutable_data_ptr<int64_t>());
  INFOMAX_CUDA_LAUNCH_CHECK();
  return inverse;
}

// ---------------------------------------------------------------------------------------------
// Paired first layer
// ---------------------------------------------------------------------------------------------

// Forward. a (N, H) data half, b (M, H) latent half, c (M, H) shuffled source, bias (H),
// perm (M); out (2M, H). Block (kLanes, kRowGroups): one warp per row, lanes along columns.
template <Activation A, typename T>
__global__ void paired_first_layer_kernel(const T* a, const T* b, const T* c, const T* bias,
                                          const int64_t* perm, int64_t n, int64_t m, int64_t h,
                                          T param, T* out) {
  for (int64_t r = int64_t(blockIdx.x) * kRowGroups + threadIdx.y; r < m;
       r += int64_t(gridDim.x) * kRowGroups) {
    const int64_t k = perm[r];
    INFOMAX_KERNEL_ASSERT(k >= 0 && k < m && "infomax_ext: perm entry outside [0, M)");
    const T* ar = a + (r % n) * h;
    const T* br = b + r * h;
    const T* cr = c + k * h;
    T* joint = out + r * h;
    T* shuffled = out + (m + r) * h;
    for (int64_t j = threadIdx.x; j < h; j += kLanes) {
      joint[j] = activation_value<A>((ar[j] + br[j]) + bias[j], param);
      shuffled[j] = activation_value<A>((ar[j] + cr[j]) + bias[j], param);
    }
  }
}

// Backward. Thread (column j, chunk) walks data rows i of its chunk and, for each, the S latent
// rows r = s N + i in order s = 0..S-1, as the CPU kernel does:
//   g1 = grad_joint[r] act'(a[i] + b[r] + bias),  g2 = grad_shuffled[r] act'(a[i] + c[perm[r]] + bias)
//   grad_a[i] = sum_s (g1 + g2)    grad_c[perm[r]] = g2    grad_b[r] = g1 (+ the shuffled row
//   q = inv[r] that read latent row r, when there is no separate source)
// and writes its chunk's partial sum of grad_a rows for the bias gradient: partial (chunks, H).
// Any of ga, gb, gc, bias_partial may be null (not requested). go: (2M, H).
template <Activation A, typename T, typename acc_t>
__global__ void paired_first_layer_backward_kernel(
    const T* go, const T* a, const T* b, const T* c, const T* bias, const int64_t* perm,
    const int64_t* inv, bool has_source, int64_t n, int64_t m, int64_t h, T param, T* ga, T* gb,
    T* gc, acc_t* bias_partial) {
  const int64_t j = int64_t(blockIdx.y) * kLanes + threadIdx.x;
  const int64_t chunk = int64_t(blockIdx.x) * kRowGroups + threadIdx.y;
  const int64_t i_begin = chunk * kDataRowsPerChunk;
  if (j >= h || i_begin >= n) return;
  const int64_t i_end = i_begin + kDataRowsPerChunk < n ? i_begin + kDataRowsPerChunk : n;
  const int64_t s_count = m / n;
  const T bias_j = bias[j];
  acc_t bias_sum = 0;
  for (int64_t i = i_begin; i < i_end; ++i) {
    const T ai = a[i * h + j];
    acc_t row_sum = 0;
    for (int64_t s = 0; s < s_count; ++s) {
      const int64_t r = s * n + i;
      const int64_t k = perm[r];
      INFOMAX_KERNEL_ASSERT(k >= 0 && k < m && "infomax_ext: perm entry outside [0, M)");
      const T br = b[r * h + j];
      const T g1 = activation_grad<A>(go[r * h + j], (ai + br) + bias_j, param);
      const T g2 = activation_grad<A>(go[(m + r) * h + j], (ai + c[k * h + j]) + bias_j, param);
      row_sum += acc_t(g1) + acc_t(g2);
      if (gc) gc[k * h + j] = g2;
      if (gb) {
        T grad = g1;
        if (!has_source) {
          const int64_t q = inv[r];
          INFOMAX_KERNEL_ASSERT(q >= 0 && q < m && "infomax_ext: inverse_perm entry outside [0, M)");
          const T aq = a[(q % n) * h + j];
          grad += activation_grad<A>(go[(m + q) * h + j], (aq + br) + bias_j, param);
        }
        gb[r * h + j] = grad;
      }
    }
    if (ga) ga[i * h + j] = static_cast<T>(row_sum);
    bias_sum += row_sum;
  }
  if (bias_partial) bias_partial[chunk * h + j] = bias_sum;
}

Tensor paired_first_layer_cuda(const Tensor& data_half_in, const Tensor& latent_half_in,
                                   const std::optional<Tensor>& shuffled_source_in,
                                   const Tensor& bias_in, const Tensor& perm_in,
                                   std::string_view activation, double param) {
  const DeviceGuard guard(data_half_in);
  const PairedFirstLayerArgs args(data_half_in, latent_half_in, shuffled_source_in, bias_in, perm_in,
                                  activation);
  const Tensor &a = args.a, &b = args.b, &c = args.c, &bias = args.bias, &perm = args.perm;
  const Activation act = args.act;
  const int64_t n = args.n, h = args.h, m = args.m;
  Tensor out = empty_on(a, {2 * m, h});
  if (h == 0) return out;

  const dim3 block(kLanes, kRowGroups);
  const unsigned int grid = grid_size(m, kRowGroups);
  const cudaStream_t stream = guard.stream();
  dispatch_floating(a.scalar_type(), "paired_first_layer_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      paired_first_layer_kernel<A, scalar_t><<<grid, block, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(), n, m, h,
          static_cast<scalar_t>(param), out.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cuda(
    const Tensor& grad_out_in, const Tensor& data_half_in, const Tensor& latent_half_in,
    const std::optional<Tensor>& shuffled_source_in, const Tensor& bias_in,
    const Tensor& perm_in, const Tensor& inverse_perm_in, std::string_view activation,
    double param, const std::vector<bool>& output_mask) {
  const DeviceGuard guard(data_half_in);
  const PairedFirstLayerBackwardArgs args(grad_out_in, data_half_in, latent_half_in,
                                          shuffled_source_in, bias_in, perm_in, inverse_perm_in,
                                          activation, output_mask);
  const Tensor &a = args.a, &b = args.b, &c = args.c, &bias = args.bias, &perm = args.perm;
  const Tensor &go = args.go, &inv = args.inv;
  const Activation act = args.act;
  const bool has_source = args.has_source, want_a = args.want_a, want_b = args.want_b;
  const bool want_c = args.want_c, want_bias = args.want_bias;
  const int64_t n = args.n, h = args.h, m = args.m;
  if (!args.any_wanted() || h == 0) return args.grads();
  INFOMAX_CHECK((h + kLanes - 1) / kLanes <= 65535, "infomax_ext: paired_first_layer supports at most ",
              65535 * kLanes, " units on CUDA, got ", h);

  const int64_t chunks = (n + kDataRowsPerChunk - 1) / kDataRowsPerChunk;
  const dim3 block(kLanes, kRowGroups);
  const dim3 grid(static_cast<unsigned int>((chunks + kRowGroups - 1) / kRowGroups),
                  static_cast<unsigned int>((h + kLanes - 1) / kLanes));
  const cudaStream_t stream = guard.stream();
  dispatch_floating(a.scalar_type(), "paired_first_layer_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, true>;
    Tensor partial;
    if (want_bias) {
      partial = empty_on(a, {chunks, h}, scalar_type_of<acc_t>());
    }
    acc_t* ppartial = want_bias ? partial.mutable_data_ptr<acc_t>() : nullptr;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      paired_first_layer_backward_kernel<A, scalar_t, acc_t><<<grid, block, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          c.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
          perm.const_data_ptr<int64_t>(), inv.const_data_ptr<int64_t>(), has_source, n, m, h,
          static_cast<scalar_t>(param), want_a ? args.grad_a.mutable_data_ptr<scalar_t>() : nullptr,
          want_b ? args.grad_b.mutable_data_ptr<scalar_t>() : nullptr,
          want_c ? args.grad_c.mutable_data_ptr<scalar_t>() : nullptr, ppartial);
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
    if (want_bias) {
      launch_column_sums<scalar_t, acc_t>(ppartial, chunks, h,
                                          args.grad_bias.mutable_data_ptr<scalar_t>(), stream);
    }
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("permutation_keys", TORCH_BOX(&permutation_keys_cuda));
  m.impl("inverse_permutation", TORCH_BOX(&inverse_permutation_cuda));
  m.impl("paired_first_layer", TORCH_BOX(&paired_first_layer_cuda));
  m.impl("paired_first_layer_backward", TORCH_BOX(&paired_first_layer_backward_cuda));
}

}  // namespace infomax_ext
