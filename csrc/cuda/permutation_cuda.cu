// CUDA kernels of the seeded permutation: counter-based keys, and the inverse of a permutation.
// Semantics are those of csrc/cpu/permutation_cpu.cpp; the keys come from permutation.h, so
// both devices give the same permutation for a seed. Entries of a permutation are checked on
// the device (INFOMAX_KERNEL_ASSERT): no host sync.
#include "../checks.h"
#include "../kernels.h"
#include "../permutation.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

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

}  // namespace

Tensor permutation_keys_cuda(const Tensor& index, int64_t seed) {
  check_permutation_index(index);
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
  check_permutation(perm);
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

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("permutation_keys", TORCH_BOX(&permutation_keys_cuda));
  m.impl("inverse_permutation", TORCH_BOX(&inverse_permutation_cuda));
}

}  // namespace infomax_ext
