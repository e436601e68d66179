// CUDA kernels of bernoulli_loglik and of its backward; semantics are those of
// csrc/cpu/bernoulli_cpu.cpp, the per-element math csrc/bernoulli.h's (CUDA's log and log1p).
// Forward: one block per row (a grid-stride loop over rows), a block tree sum of the row's
// terms in acc_t (deterministic: the reduction's shape depends on D only). Backward: one
// grid-stride loop over the entries of p for grad_p, one over the entries of x for grad_x (each
// summing its S samples in order).
#include "../bernoulli.h"
#include "../bernoulli_args.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

template <typename T, typename acc_t>
__global__ void bernoulli_loglik_kernel(const T* p, const T* x, int64_t m, int64_t n, int64_t d,
                                        T* out) {
  __shared__ acc_t shared_sum[kThreads];
  for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {  // the same trip count in every thread
    const T* pr = p + r * d;
    const T* xr = x + (r % n) * d;
    acc_t sum = 0;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) sum += acc_t(bernoulli_term(pr[j], xr[j]));
    sum = block_sum(sum, shared_sum);
    if (threadIdx.x == 0) out[r] = static_cast<T>(sum);
  }
}

template <typename T>
__global__ void bernoulli_grad_p_kernel(const T* grad, const T* p, const T* x, int64_t m,
                                        int64_t n, int64_t d, T* grad_p) {
  INFOMAX_GRID_STRIDE_LOOP(e, m * d) {
    const int64_t r = e / d, j = e - r * d;
    grad_p[e] = bernoulli_grad_p(grad[r], p[e], x[(r % n) * d + j]);
  }
}

template <typename T>
__global__ void bernoulli_grad_x_kernel(const T* grad, const T* p, int64_t m, int64_t n,
                                        int64_t d, T* grad_x) {
  INFOMAX_GRID_STRIDE_LOOP(e, n * d) {
    const int64_t i = e / d, j = e - i * d;
    T total = 0;
    for (int64_t r = i; r < m; r += n) total += grad[r] * bernoulli_grad_x(p[r * d + j]);
    grad_x[e] = total;
  }
}

Tensor bernoulli_loglik_cuda(const Tensor& p, const Tensor& x) {
  const BernoulliArgs args(p, x);
  const DeviceGuard guard(args.p);
  Tensor out = empty_on(args.p, {args.m});
  dispatch_floating(args.p.scalar_type(), "bernoulli_loglik_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, true>;
    bernoulli_loglik_kernel<scalar_t, acc_t><<<grid_size(args.m, 1), kThreads, 0, guard.stream()>>>(
        args.p.const_data_ptr<scalar_t>(), args.x.const_data_ptr<scalar_t>(), args.m, args.n,
        args.d, out.mutable_data_ptr<scalar_t>());
    INFOMAX_CUDA_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor> bernoulli_loglik_backward_cuda(const Tensor& grad, const Tensor& p,
                                                          const Tensor& x,
                                                          const std::vector<bool>& output_mask) {
  const BernoulliBackwardArgs args(grad, p, x, output_mask);
  const DeviceGuard guard(args.p);
  dispatch_floating(args.p.scalar_type(), "bernoulli_loglik_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    if (args.want_p) {
      bernoulli_grad_p_kernel<scalar_t>
          <<<grid_size(args.m * args.d, kThreads), kThreads, 0, guard.stream()>>>(
              args.grad.const_data_ptr<scalar_t>(), args.p.const_data_ptr<scalar_t>(),
              args.x.const_data_ptr<scalar_t>(), args.m, args.n, args.d,
              args.grad_p.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    }
    if (args.want_x) {
      bernoulli_grad_x_kernel<scalar_t>
          <<<grid_size(args.n * args.d, kThreads), kThreads, 0, guard.stream()>>>(
              args.grad.const_data_ptr<scalar_t>(), args.p.const_data_ptr<scalar_t>(), args.m,
              args.n, args.d, args.grad_x.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    }
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("bernoulli_loglik", TORCH_BOX(&bernoulli_loglik_cuda));
  m.impl("bernoulli_loglik_backward", TORCH_BOX(&bernoulli_loglik_backward_cuda));
}

}  // namespace infomax_ext
