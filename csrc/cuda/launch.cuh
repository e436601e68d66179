#pragma once
// Launch helpers shared by the CUDA kernels: grid sizes, a grid-stride loop, and the
// deterministic reductions (a block tree sum and max, and column sums of per-chunk partial sums).
// Every reduction has a fixed shape that depends only on the problem size, never on the device,
// so results are bit-identical from run to run and between GPUs of the same architecture.
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <cassert>
#include <cstdint>

#include "../tensor.h"

// A failed launch (bad configuration, no device) as a user-visible error.
#define INFOMAX_CUDA_LAUNCH_CHECK()                                                          \
  do {                                                                                       \
    const cudaError_t launch_error = cudaGetLastError();                                     \
    INFOMAX_CHECK(launch_error == cudaSuccess, "infomax_ext: CUDA kernel launch failed: ",   \
                  cudaGetErrorString(launch_error));                                         \
  } while (0)

// A device-side check that stays on in release builds (a failed one aborts the kernel with a
// device assert, as torch's own kernels do).
#define INFOMAX_KERNEL_ASSERT(cond)                                                          \
  do {                                                                                       \
    if (!(cond)) __assert_fail(#cond, __FILE__, __LINE__, __func__);                         \
  } while (0)

namespace infomax_ext {

// Makes the tensor's GPU current for the guard's life; stream() is torch's current stream there.
class DeviceGuard {
 public:
  explicit DeviceGuard(const Tensor& t) : index_(t.get_device_index()), guard_(index_) {}
  cudaStream_t stream() const {
    void* stream = nullptr;
    INFOMAX_CHECK(aoti_torch_get_current_cuda_stream(index_, &stream) == AOTI_TORCH_SUCCESS,
                  "infomax_ext: no current CUDA stream on device ", int(index_));
    return static_cast<cudaStream_t>(stream);
  }

 private:
  int32_t index_;
  torch::stable::accelerator::DeviceGuard guard_;
};

// Threads of a 1-D block; also the width of block_sum's tree.
constexpr int kThreads = 256;

// 2-D blocks of row/column kernels: 32 lanes along the columns (one warp reads 32 consecutive
// entries of a row), kRowGroups warps along rows or row chunks.
constexpr int kLanes = 32;
constexpr int kRowGroups = 8;

// Blocks for a grid-stride loop over `items` work items, `per_block` items per block and pass:
// at least 1, at most 2^20 (the loop covers the rest).
inline unsigned int grid_size(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned int>(std::clamp<int64_t>(blocks, 1, int64_t(1) << 20));
}

// for (int64_t i = first index of this thread; i < n; i += all threads of the grid)
#define INFOMAX_GRID_STRIDE_LOOP(i, n)                                                        \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);                   \
       i += int64_t(gridDim.x) * blockDim.x)

// Sum of v over the kThreads threads of a 1-D block, in a fixed tree order; every thread gets
// the total. `shared` holds kThreads entries. All threads of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const T total = shared[0];
  __syncthreads();  // shared may be reused right after
  return total;
}

// max(a, b), NaN when either is NaN.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (b > a || b != b) && a == a ? b : a;
}

// nan_max of v over the kThreads threads of a 1-D block in a fixed tree; every thread gets it.
template <typename T>
__device__ __forceinline__ T block_max(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      shared[threadIdx.x] = nan_max(shared[threadIdx.x], shared[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  const T top = shared[0];
  __syncthreads();
  return top;
}

// Second pass of a chunked reduction: out[col] = sum over c < chunks of partial[c * cols + col],
// one block per column, each thread summing a fixed stride of chunks, then block_sum.
// partial: (chunks, cols) in acc_t; out: (cols) in T. Launch with kThreads threads, cols blocks.
template <typename T, typename acc_t>
__global__ void column_sums_kernel(const acc_t* partial, int64_t chunks, int64_t cols, T* out) {
  __shared__ acc_t shared[kThreads];
  for (int64_t col = blockIdx.x; col < cols; col += gridDim.x) {
    acc_t sum = 0;
    for (int64_t c = threadIdx.x; c < chunks; c += kThreads) sum += partial[c * cols + col];
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) out[col] = static_cast<T>(sum);
  }
}

// Launches column_sums_kernel on `stream` (partial: (chunks, cols), out: (cols)).
template <typename T, typename acc_t>
void launch_column_sums(const acc_t* partial, int64_t chunks, int64_t cols, T* out,
                        cudaStream_t stream) {
  if (cols == 0) return;
  column_sums_kernel<T, acc_t><<<grid_size(cols, 1), kThreads, 0, stream>>>(partial, chunks, cols, out);
  INFOMAX_CUDA_LAUNCH_CHECK();
}

}  // namespace infomax_ext
