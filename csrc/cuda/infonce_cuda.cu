// CUDA kernels of infonce_rows (InfoNCE from rows of an all-pairs score matrix) and of its
// backward; semantics are those of csrc/cpu/infonce_cpu.cpp. One block per row: a block max of
// the row (NaN when any entry is NaN), the shift = that max (0 when not finite, as
// torch.logsumexp), a block sum of exp(x - shift) in acc_t, row_lse = shift + log(sum) and the
// row's term joint_i - row_lse_i; one block then sums the terms in a fixed order (deterministic:
// the reductions' shapes depend on R and C only). The incoming gradient lives on the device and
// is read by pointer inside the backward kernel: no host sync.
#include <cmath>

#include "../infonce_args.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

// row_lse[i] and terms[i] = joint[i] - row_lse[i] (in acc_t) for the rows of this block
// (blockIdx.x, then every gridDim.x-th row).
template <typename T, typename acc_t>
__global__ void infonce_rows_kernel(const T* rows, const T* joint, int64_t r, int64_t c,
                                    T* row_lse, acc_t* terms) {
  __shared__ T shared_max[kThreads];
  __shared__ acc_t shared_sum[kThreads];
  for (int64_t i = blockIdx.x; i < r; i += gridDim.x) {  // the same trip count in every thread
    const T* x = rows + i * c;
    T top = T(-INFINITY);
    for (int64_t j = threadIdx.x; j < c; j += kThreads) top = nan_max(top, x[j]);
    top = block_max(top, shared_max);
    const T shift = isfinite(top) ? top : T(0);
    acc_t sum = 0;
    for (int64_t j = threadIdx.x; j < c; j += kThreads) sum += acc_t(exp(x[j] - shift));
    sum = block_sum(sum, shared_sum);
    if (threadIdx.x == 0) {
      const acc_t lse = acc_t(shift) + log(sum);
      row_lse[i] = static_cast<T>(lse);
      terms[i] = acc_t(joint[i]) - lse;
    }
  }
}

// One block: *value = mean of the r terms + log c.
template <typename T, typename acc_t>
__global__ void infonce_finish_kernel(const acc_t* terms, int64_t r, int64_t c, T* value) {
  __shared__ acc_t shared[kThreads];
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < r; i += kThreads) sum += terms[i];
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) *value = static_cast<T>(sum / acc_t(r) + log(acc_t(c)));
}

// grad_rows[i, j] = -(g / r) exp(rows[i, j] - row_lse[i]), grad_joint[i] = g / r.
template <typename T>
__global__ void infonce_rows_backward_kernel(const T* grad, const T* rows, const T* row_lse,
                                             int64_t r, int64_t c, T* grad_rows, T* grad_joint) {
  const T per_row = *grad / T(r);
  const T neg = -per_row;
  INFOMAX_GRID_STRIDE_LOOP(e, r * c) { grad_rows[e] = neg * exp(rows[e] - row_lse[e / c]); }
  INFOMAX_GRID_STRIDE_LOOP(i, r) { grad_joint[i] = per_row; }
}

std::tuple<Tensor, Tensor> infonce_rows_cuda(const Tensor& rows, const Tensor& joint) {
  const InfoNceRowsArgs args(rows, joint);
  const DeviceGuard guard(args.rows);
  Tensor value = empty_on(args.rows, {});
  Tensor row_lse = empty_on(args.rows, {args.r});
  dispatch_floating(args.rows.scalar_type(), "infonce_rows_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, true>;
    Tensor terms = empty_on(args.rows, {args.r}, scalar_type_of<acc_t>());
    infonce_rows_kernel<scalar_t, acc_t><<<grid_size(args.r, 1), kThreads, 0, guard.stream()>>>(
        args.rows.const_data_ptr<scalar_t>(), args.joint.const_data_ptr<scalar_t>(), args.r,
        args.c, row_lse.mutable_data_ptr<scalar_t>(), terms.mutable_data_ptr<acc_t>());
    INFOMAX_CUDA_LAUNCH_CHECK();
    infonce_finish_kernel<scalar_t, acc_t><<<1, kThreads, 0, guard.stream()>>>(
        terms.const_data_ptr<acc_t>(), args.r, args.c, value.mutable_data_ptr<scalar_t>());
    INFOMAX_CUDA_LAUNCH_CHECK();
  });
  return {value, row_lse};
}

std::tuple<Tensor, Tensor> infonce_rows_backward_cuda(const Tensor& grad, const Tensor& rows,
                                                      const Tensor& joint,
                                                      const Tensor& row_lse) {
  const InfoNceRowsBackwardArgs args(grad, rows, joint, row_lse);
  const DeviceGuard guard(args.rows);
  dispatch_floating(args.rows.scalar_type(), "infonce_rows_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    infonce_rows_backward_kernel<scalar_t>
        <<<grid_size(args.r * args.c, kThreads), kThreads, 0, guard.stream()>>>(
            args.grad.const_data_ptr<scalar_t>(), args.rows.const_data_ptr<scalar_t>(),
            args.row_lse.const_data_ptr<scalar_t>(), args.r, args.c,
            args.grad_rows.mutable_data_ptr<scalar_t>(),
            args.grad_joint.mutable_data_ptr<scalar_t>());
    INFOMAX_CUDA_LAUNCH_CHECK();
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("infonce_rows", TORCH_BOX(&infonce_rows_cuda));
  m.impl("infonce_rows_backward", TORCH_BOX(&infonce_rows_backward_cuda));
}

}  // namespace infomax_ext
