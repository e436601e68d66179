// CUDA kernels of mi_bound (the value and the training objective of a bound of csrc/bounds.h
// from joint scores and negatives' scores) and of its backward. Semantics are those of
// csrc/cpu/bound_cpu.cpp; the per-element formulas are the same header's. Reductions are
// deterministic: blocks of kScoresPerBlock scores give partial sums (a block tree), then one
// block combines them in a fixed order; for nwj the sums are those of nwj_bound
// (csrc/cuda/critic_head_cuda.cu). A log-mean-exp first finds the largest term (a max pass) and
// shifts by it (by 0 when it is not finite); the forward returns the shift and the log of the
// shifted sum, which the backward takes instead of summing again. Scalars that live on the
// device (the shift, the log-sum-exp, the incoming gradients) are read by pointer inside the
// kernels: no host sync.
#include <cmath>

#include "../bound_args.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

// Scores per block of the first passes (kThreads threads, 4 scores each).
constexpr int64_t kScoresPerBlock = 4 * kThreads;

int64_t blocks_for(int64_t n) { return (n + kScoresPerBlock - 1) / kScoresPerBlock; }

// LogMeanExpOf, first pass: partial[block] = max of n(t_k) over the block's negatives.
template <MiBound B, typename T>
__global__ void negative_max_kernel(const T* tn, int64_t k, T param, T* partial) {
  __shared__ T shared[kThreads];
  const int64_t begin = int64_t(blockIdx.x) * kScoresPerBlock;
  T top = T(-INFINITY);
  for (int64_t e = begin + threadIdx.x; e < begin + kScoresPerBlock && e < k; e += kThreads) {
    top = nan_max(top, bound_negative_term<B>(tn[e], param));
  }
  top = block_max(top, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = top;
}

// LogMeanExpOf, second pass (one block): *shift = the max of partial, 0 when not finite.
template <typename T, typename acc_t>
__global__ void shift_kernel(const T* partial, int64_t blocks, acc_t* shift) {
  __shared__ T shared[kThreads];
  T top = T(-INFINITY);
  for (int64_t c = threadIdx.x; c < blocks; c += kThreads) top = nan_max(top, partial[c]);
  top = block_max(top, shared);
  if (threadIdx.x == 0) *shift = isfinite(top) ? acc_t(top) : acc_t(0);
}

// Sums. Blocks [0, joint_blocks) cover the joint scores, the others the negatives; each writes
// partial[2 block] (the value's part: t_j, or n(t_k) for MeanOf, exp(n(t_k) - *shift) for
// LogMeanExpOf) and partial[2 block + 1] (the JS objective's: -softplus(-t_j), softplus(t_k);
// 0 for a bound that trains on its value).
template <MiBound B, typename T, typename acc_t>
__global__ void bound_partial_sums_kernel(const T* tj, int64_t m, const T* tn, int64_t k,
                                          int64_t joint_blocks, T param, const acc_t* shift,
                                          acc_t* partial) {
  using Traits = BoundTraits<B>;
  constexpr bool js = Traits::objective == BoundObjective::JensenShannon;
  __shared__ acc_t shared[kThreads];
  const bool joint = blockIdx.x < joint_blocks;
  const int64_t block = joint ? blockIdx.x : blockIdx.x - joint_blocks;
  const int64_t begin = block * kScoresPerBlock;
  const int64_t end = joint ? m : k;
  acc_t value_sum = 0, js_sum = 0;
  for (int64_t e = begin + threadIdx.x; e < begin + kScoresPerBlock && e < end; e += kThreads) {
    if (joint) {
      value_sum += acc_t(tj[e]);
      if constexpr (js) js_sum += acc_t(js_joint_term(tj[e]));
    } else {
      if constexpr (Traits::reduction == BoundReduction::MeanOf) {
        value_sum += acc_t(bound_negative_term<B>(tn[e], param));
      } else {
        value_sum += acc_t(exp(bound_negative_term<B>(tn[e], param) - static_cast<T>(*shift)));
      }
      if constexpr (js) js_sum += acc_t(js_negative_term(tn[e]));
    }
  }
  value_sum = block_sum(value_sum, shared);
  if constexpr (js) js_sum = block_sum(js_sum, shared);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = value_sum;
    partial[2 * blockIdx.x + 1] = js_sum;
  }
}

// Last pass (one block): value, objective and log_sum_exp = (shift, log_sum) with
// log_sum = log sum_k exp(n(t_k) - shift) for LogMeanExpOf, (0, 0) otherwise.
template <MiBound B, typename T, typename acc_t>
__global__ void bound_finish_kernel(const acc_t* partial, int64_t joint_blocks,
                                    int64_t negative_blocks, int64_t m, int64_t k,
                                    const acc_t* shift, T* value, T* objective, T* log_sum_exp) {
  using Traits = BoundTraits<B>;
  constexpr bool js = Traits::objective == BoundObjective::JensenShannon;
  __shared__ acc_t shared[kThreads];
  acc_t joint_sum = 0, negative_sum = 0, js_joint = 0, js_negative = 0;
  for (int64_t c = threadIdx.x; c < joint_blocks; c += kThreads) {
    joint_sum += partial[2 * c];
    if constexpr (js) js_joint += partial[2 * c + 1];
  }
  for (int64_t c = threadIdx.x; c < negative_blocks; c += kThreads) {
    negative_sum += partial[2 * (joint_blocks + c)];
    if constexpr (js) js_negative += partial[2 * (joint_blocks + c) + 1];
  }
  joint_sum = block_sum(joint_sum, shared);
  negative_sum = block_sum(negative_sum, shared);
  if constexpr (js) {
    js_joint = block_sum(js_joint, shared);
    js_negative = block_sum(js_negative, shared);
  }
  if (threadIdx.x != 0) return;
  acc_t reduced, log_sum = 0;
  if constexpr (Traits::reduction == BoundReduction::MeanOf) {
    reduced = negative_sum / acc_t(k);
  } else {
    log_sum = log(negative_sum);
    reduced = *shift + log_sum - log(acc_t(k));
  }
  acc_t v = joint_sum / acc_t(m) - reduced;
  if constexpr (Traits::offset != 0) v += acc_t(Traits::offset);
  const acc_t o = js ? js_joint / acc_t(m) - js_negative / acc_t(k) : v;
  *value = static_cast<T>(v);
  *objective = static_cast<T>(o);
  log_sum_exp[0] = Traits::reduction == BoundReduction::MeanOf ? T(0) : static_cast<T>(*shift);
  log_sum_exp[1] = static_cast<T>(log_sum);
}

// value, objective (one T each) and log_sum_exp (2 T) of bound B, on the device.
template <MiBound B, typename T>
void launch_bound_sums(const T* tj, int64_t m, const T* tn, int64_t k, T param, const Tensor& like,
                       T* value, T* objective, T* log_sum_exp, cudaStream_t stream) {
  using acc_t = acc_type<T, true>;
  const int64_t joint_blocks = blocks_for(m), negative_blocks = blocks_for(k);
  Tensor partial = empty_on(like, {2 * (joint_blocks + negative_blocks) + 1}, scalar_type_of<acc_t>());
  acc_t* ppartial = partial.mutable_data_ptr<acc_t>();
  acc_t* shift = ppartial + 2 * (joint_blocks + negative_blocks);
  if constexpr (BoundTraits<B>::reduction == BoundReduction::LogMeanExpOf) {
    Tensor max_partial = empty_on(like, {negative_blocks}, scalar_type_of<T>());
    negative_max_kernel<B, T><<<static_cast<unsigned int>(negative_blocks), kThreads, 0, stream>>>(
        tn, k, param, max_partial.mutable_data_ptr<T>());
    INFOMAX_CUDA_LAUNCH_CHECK();
    shift_kernel<T, acc_t><<<1, kThreads, 0, stream>>>(max_partial.const_data_ptr<T>(),
                                                       negative_blocks, shift);
    INFOMAX_CUDA_LAUNCH_CHECK();
  }
  bound_partial_sums_kernel<B, T, acc_t>
      <<<static_cast<unsigned int>(joint_blocks + negative_blocks), kThreads, 0, stream>>>(
          tj, m, tn, k, joint_blocks, param, shift, ppartial);
  INFOMAX_CUDA_LAUNCH_CHECK();
  bound_finish_kernel<B, T, acc_t><<<1, kThreads, 0, stream>>>(
      ppartial, joint_blocks, negative_blocks, m, k, shift, value, objective, log_sum_exp);
  INFOMAX_CUDA_LAUNCH_CHECK();
}

// The gradients of the scores, gj (m) and gn (k), from the incoming gradients of the value and
// of the objective (null: absent). log_sum_exp: the forward's (shift, log_sum) (LogMeanExpOf).
template <MiBound B, typename T>
__global__ void mi_bound_backward_kernel(const T* grad_value, const T* grad_objective, const T* tj,
                                         int64_t m, const T* tn, int64_t k, T inv_m, T inv_k,
                                         T param, const T* log_sum_exp, T* gj, T* gn) {
  using Traits = BoundTraits<B>;
  constexpr bool js = Traits::objective == BoundObjective::JensenShannon;
  const bool value_part = grad_value != nullptr || (!js && grad_objective != nullptr);
  const T go = grad_objective ? *grad_objective : T(0);
  const T g = !js && grad_value && grad_objective ? *grad_value + go
              : grad_value                        ? *grad_value
                                                  : go;
  const bool js_part = js && grad_objective != nullptr;
  INFOMAX_GRID_STRIDE_LOOP(e, m + k) {
    if (e < m) {
      T d = value_part ? g * inv_m : T(0);
      if (js_part) d += js_joint_grad(tj[e], go, inv_m);
      gj[e] = d;
    } else {
      const T t = tn[e - m];
      T d = T(0);
      if (value_part) {
        if constexpr (Traits::reduction == BoundReduction::MeanOf) {
          d = bound_mean_negative_grad<B>(t, g, inv_k, param);
        } else {
          d = bound_log_mean_exp_negative_grad<B>(t, g, log_sum_exp[0], log_sum_exp[1], param);
        }
      }
      if (js_part) d += js_negative_grad(t, go, inv_k);
      gn[e - m] = d;
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> mi_bound_cuda(const Tensor& t_joint, const Tensor& t_negatives,
                                                 std::string_view bound, double param) {
  const MiBoundArgs args(t_joint, t_negatives, bound, param);
  const DeviceGuard guard(args.t_joint);
  Tensor value = empty_on(args.t_joint, {});
  Tensor objective = empty_on(args.t_joint, {});
  Tensor log_sum_exp = empty_on(args.t_joint, {2});
  dispatch_floating(args.t_joint.scalar_type(), "mi_bound_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    dispatch_bound(args.bound, [&](auto tag) {
      constexpr MiBound B = decltype(tag)::value;
      launch_bound_sums<B, scalar_t>(
          args.t_joint.const_data_ptr<scalar_t>(), args.m,
          args.t_negatives.const_data_ptr<scalar_t>(), args.k, static_cast<scalar_t>(param),
          args.t_joint, value.mutable_data_ptr<scalar_t>(), objective.mutable_data_ptr<scalar_t>(),
          log_sum_exp.mutable_data_ptr<scalar_t>(), guard.stream());
    });
  });
  return {value, objective, log_sum_exp};
}

std::tuple<Tensor, Tensor> mi_bound_backward_cuda(const std::optional<Tensor>& grad_value,
                                                  const std::optional<Tensor>& grad_objective,
                                                  const Tensor& t_joint, const Tensor& t_negatives,
                                                  std::string_view bound, double param,
                                                  const std::optional<Tensor>& log_sum_exp) {
  const MiBoundBackwardArgs args(grad_value, grad_objective, t_joint, t_negatives, bound, param,
                                 log_sum_exp);
  const DeviceGuard guard(args.t_joint);
  const int64_t m = args.m, k = args.k;
  dispatch_floating(args.t_joint.scalar_type(), "mi_bound_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const scalar_t* tj = args.t_joint.const_data_ptr<scalar_t>();
    const scalar_t* tn = args.t_negatives.const_data_ptr<scalar_t>();
    const scalar_t p = static_cast<scalar_t>(param);
    dispatch_bound(args.bound, [&](auto tag) {
      constexpr MiBound B = decltype(tag)::value;
      // (shift, log_sum): the forward's, or summed again (then value and objective unused)
      Tensor parts = args.has_log_sum_exp ? args.log_sum_exp : empty_on(args.t_joint, {4});
      if constexpr (BoundTraits<B>::reduction == BoundReduction::LogMeanExpOf) {
        if (!args.has_log_sum_exp) {
          scalar_t* scratch = parts.mutable_data_ptr<scalar_t>();
          launch_bound_sums<B, scalar_t>(tj, m, tn, k, p, args.t_joint, scratch + 2, scratch + 3,
                                         scratch, guard.stream());
        }
      }
      mi_bound_backward_kernel<B, scalar_t>
          <<<grid_size(m + k, kThreads), kThreads, 0, guard.stream()>>>(
              args.has_grad_value ? args.grad_value.const_data_ptr<scalar_t>() : nullptr,
              args.has_grad_objective ? args.grad_objective.const_data_ptr<scalar_t>() : nullptr,
              tj, m, tn, k, scalar_t(1) / scalar_t(m), scalar_t(1) / scalar_t(k), p,
              parts.const_data_ptr<scalar_t>(), args.grad_joint.mutable_data_ptr<scalar_t>(),
              args.grad_negatives.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("mi_bound", TORCH_BOX(&mi_bound_cuda));
  m.impl("mi_bound_backward", TORCH_BOX(&mi_bound_backward_cuda));
}

}  // namespace infomax_ext
