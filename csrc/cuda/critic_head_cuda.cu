// CUDA kernels of the NWJ bound  I = mean(t_joint) - mean(exp(t_shuffled - 1)):
// on its own (nwj_bound), and fused with the MI chain's last layer t = act(hidden . w + b)
// (critic_head), where rows [0, n_joint) of hidden are joint pairs and the rest shuffled pairs.
// Semantics are those of csrc/cpu/critic_head_cpu.cpp. Reductions are deterministic: fixed-size chunks
// give partial sums (a block tree or one thread per chunk), then a second ordered pass.
// Scalars that live on the device (the head's bias, incoming gradients) are read by pointer
// inside the kernels: no host sync. bfloat16 and float16 scores: products, exp and sums in
// float32 (opmath_t), the bound and its incoming gradient float32 (bound_scalar_type).

#include <vector>

#include "../activations.h"
#include "../bounds.h"
#include "../op_args.h"
#include "launch.cuh"

namespace infomax_ext {
namespace {

// Scores per block of the first pass of the NWJ sums (kThreads threads, 4 scores each).
constexpr int64_t kScoresPerBlock = 4 * kThreads;
// Rows per chunk of the head's backward pass (weight- and bias-gradient partial sums).
constexpr int64_t kRowsPerChunk = 32;

// ---------------------------------------------------------------------------------------------
// The NWJ sums: sum(t_joint) and sum(exp(t_shuffled - 1))
// ---------------------------------------------------------------------------------------------

// First pass. Blocks [0, joint_blocks) sum kScoresPerBlock joint scores each, the others
// marginal terms of the shuffled scores: partial (joint_blocks + marg_blocks).
template <typename T, typename acc_t>
__global__ void nwj_partial_sums_kernel(const T* t_joint, int64_t n_joint, const T* t_shuffled,
                                        int64_t n_marg, int64_t joint_blocks, acc_t* partial) {
  __shared__ acc_t shared[kThreads];
  const bool joint = blockIdx.x < joint_blocks;
  const int64_t block = joint ? blockIdx.x : blockIdx.x - joint_blocks;
  const int64_t begin = block * kScoresPerBlock;
  const int64_t end = joint ? n_joint : n_marg;
  acc_t sum = 0;
  for (int64_t e = begin + threadIdx.x; e < begin + kScoresPerBlock && e < end; e += kThreads) {
    sum += joint ? acc_t(t_joint[e])
                 : acc_t(bound_negative_term<MiBound::Nwj>(opmath_t<T>(t_shuffled[e]),
                                                           opmath_t<T>(0)));
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// Second pass (one block): bound = sum(partial[:joint_blocks]) / n_joint
//                                 - sum(partial[joint_blocks:]) / n_marg.
template <typename T, typename acc_t>
__global__ void nwj_finish_kernel(const acc_t* partial, int64_t joint_blocks, int64_t marg_blocks,
                                  int64_t n_joint, int64_t n_marg, T* bound) {
  __shared__ acc_t shared[kThreads];
  acc_t js = 0, ms = 0;
  for (int64_t c = threadIdx.x; c < joint_blocks; c += kThreads) js += partial[c];
  for (int64_t c = threadIdx.x; c < marg_blocks; c += kThreads) ms += partial[joint_blocks + c];
  js = block_sum(js, shared);
  ms = block_sum(ms, shared);
  if (threadIdx.x == 0) *bound = static_cast<T>(js / acc_t(n_joint) - ms / acc_t(n_marg));
}

// bound (0-dim, written on the device; `like` gives the device) from joint scores (n_joint) and shuffled scores (n_marg).
template <typename T>
void launch_nwj_sums(const T* t_joint, int64_t n_joint, const T* t_shuffled, int64_t n_marg,
                     const Tensor& like, opmath_t<T>* bound, cudaStream_t stream) {
  using acc_t = acc_type<T, true>;
  const int64_t joint_blocks = (n_joint + kScoresPerBlock - 1) / kScoresPerBlock;
  const int64_t marg_blocks = (n_marg + kScoresPerBlock - 1) / kScoresPerBlock;
  Tensor partial = empty_on(like, {joint_blocks + marg_blocks}, scalar_type_of<acc_t>());
  acc_t* ppartial = partial.mutable_data_ptr<acc_t>();
  nwj_partial_sums_kernel<T, acc_t>
      <<<static_cast<unsigned int>(joint_blocks + marg_blocks), kThreads, 0, stream>>>(
          t_joint, n_joint, t_shuffled, n_marg, joint_blocks, ppartial);
  INFOMAX_CUDA_LAUNCH_CHECK();
  nwj_finish_kernel<opmath_t<T>, acc_t><<<1, kThreads, 0, stream>>>(ppartial, joint_blocks, marg_blocks,
                                                          n_joint, n_marg, bound);
  INFOMAX_CUDA_LAUNCH_CHECK();
}

// d bound / d t times the incoming gradient *grad: gj (n_joint), gm (n_marg).
template <typename T, typename op_t = opmath_t<T>>
__global__ void nwj_bound_backward_kernel(const op_t* grad, const T* t_shuffled, int64_t n_joint,
                                          int64_t n_marg, op_t inv_joint, op_t inv_marg, T* gj,
                                          T* gm) {
  const op_t g = *grad;
  INFOMAX_GRID_STRIDE_LOOP(e, n_joint + n_marg) {
    if (e < n_joint) {
      gj[e] = T(mean_bound_score_grad<MiBound::Nwj>(true, op_t(0), g, inv_joint, inv_marg));
    } else {
      gm[e - n_joint] = T(mean_bound_score_grad<MiBound::Nwj>(false, op_t(t_shuffled[e - n_joint]),
                                                              g, inv_joint, inv_marg));
    }
  }
}

Tensor nwj_bound_cuda(const Tensor& t_joint_in, const Tensor& t_marg_in) {
  check_nwj_bound(t_joint_in, t_marg_in);
  const DeviceGuard guard(t_joint_in);
  const Tensor tj = as_contiguous(t_joint_in), tm = as_contiguous(t_marg_in);
  Tensor bound = empty_on(tj, {}, bound_scalar_type(tj.scalar_type()));
  dispatch_floating_and_reduced(tj.scalar_type(), "nwj_bound_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    launch_nwj_sums<scalar_t>(tj.const_data_ptr<scalar_t>(), tj.size(0), tm.const_data_ptr<scalar_t>(),
                              tm.size(0), tj, bound.mutable_data_ptr<opmath_t<scalar_t>>(),
                              guard.stream());
  });
  return bound;
}

std::tuple<Tensor, Tensor> nwj_bound_backward_cuda(const Tensor& grad_in,
                                                           const Tensor& t_joint_in,
                                                           const Tensor& t_marg_in) {
  check_nwj_bound(t_joint_in, t_marg_in);
  check_scalar_grad(grad_in, t_joint_in, "grad");
  const DeviceGuard guard(t_joint_in);
  const Tensor tj = as_contiguous(t_joint_in), tm = as_contiguous(t_marg_in);
  const Tensor grad = as_contiguous(grad_in);
  Tensor gj = empty_like_shape(tj), gm = empty_like_shape(tm);
  const int64_t nj = tj.size(0), nm = tm.size(0);
  dispatch_floating_and_reduced(tj.scalar_type(), "nwj_bound_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    nwj_bound_backward_kernel<scalar_t>
        <<<grid_size(nj + nm, kThreads), kThreads, 0, guard.stream()>>>(
            grad.const_data_ptr<op_t>(), tm.const_data_ptr<scalar_t>(), nj, nm,
            op_t(1) / op_t(nj), op_t(1) / op_t(nm), gj.mutable_data_ptr<scalar_t>(),
            gm.mutable_data_ptr<scalar_t>());
    INFOMAX_CUDA_LAUNCH_CHECK();
  });
  return {gj, gm};
}

// ---------------------------------------------------------------------------------------------
// The head: scores t = act(hidden . w + b) and the bound
// ---------------------------------------------------------------------------------------------

// One warp per row: pre[r] = hidden[r] . w + *bias (bias may be null), scores[r] = act(pre[r]).
// hidden (R, h), w (h). The warp's partial dot products are combined in a fixed shuffle tree.
template <Activation A, typename T, typename acc_t>
__global__ void critic_head_scores_kernel(const T* hidden, const T* w, const T* bias, int64_t rows,
                                       int64_t h, opmath_t<T> param, T* scores, T* pre) {
  using op_t = opmath_t<T>;
  const int lane = threadIdx.x % kLanes;
  const int warps = kThreads / kLanes;
  const op_t b = bias ? op_t(*bias) : op_t(0);
  for (int64_t r = int64_t(blockIdx.x) * warps + threadIdx.x / kLanes; r < rows;
       r += int64_t(gridDim.x) * warps) {
    const T* hr = hidden + r * h;
    acc_t dot = 0;
    for (int64_t j = lane; j < h; j += kLanes) dot += acc_t(hr[j]) * acc_t(w[j]);
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {
      dot += __shfl_down_sync(0xffffffffu, dot, offset);
    }
    if (lane == 0) {
      const T z = T(static_cast<op_t>(dot) + b);
      pre[r] = z;
      scores[r] = T(activation_value<A>(op_t(z), param));
    }
  }
}

// Backward. Thread (column j, chunk) walks the chunk's rows r and, per row,
//   dpre = (d bound / d scores[r] * *grad_bound + grad_scores[r]) * act'(pre[r])
//   grad_hidden[r, j] = dpre * w[j],   w_partial[chunk, j] += dpre * hidden[r, j]
// and the thread of column 0 sums dpre into b_partial[chunk]. Null outputs are not requested;
// grad_scores may be null (zero).
template <Activation A, typename T, typename acc_t>
__global__ void critic_head_backward_kernel(const opmath_t<T>* grad_bound, const T* grad_scores,
                                         const T* hidden, const T* w, const T* scores, const T* pre,
                                         int64_t rows, int64_t h, int64_t n_joint,
                                         opmath_t<T> inv_joint, opmath_t<T> inv_marg,
                                         opmath_t<T> param, T* grad_hidden, acc_t* w_partial,
                                         acc_t* b_partial) {
  using op_t = opmath_t<T>;
  const int64_t j = int64_t(blockIdx.y) * kLanes + threadIdx.x;
  const int64_t chunk = int64_t(blockIdx.x) * kRowGroups + threadIdx.y;
  const int64_t r_begin = chunk * kRowsPerChunk;
  const bool column = j < h;
  const bool bias_thread = b_partial != nullptr && j == 0;
  if (r_begin >= rows || !(column || bias_thread)) return;
  const int64_t r_end = r_begin + kRowsPerChunk < rows ? r_begin + kRowsPerChunk : rows;
  const op_t g = *grad_bound;
  const op_t wj = column ? op_t(w[j]) : op_t(0);
  acc_t w_sum = 0, b_sum = 0;
  for (int64_t r = r_begin; r < r_end; ++r) {
    op_t dscore =
        mean_bound_score_grad<MiBound::Nwj>(r < n_joint, op_t(scores[r]), g, inv_joint, inv_marg);
    if (grad_scores) dscore += op_t(grad_scores[r]);
    const op_t dpre = activation_grad<A>(dscore, op_t(pre[r]), param);
    b_sum += acc_t(dpre);
    if (column) {
      if (grad_hidden) grad_hidden[r * h + j] = T(dpre * wj);
      if (w_partial) w_sum += acc_t(dpre) * acc_t(hidden[r * h + j]);
    }
  }
  if (column && w_partial) w_partial[chunk * h + j] = w_sum;
  if (bias_thread) b_partial[chunk] = b_sum;
}

}  // namespace

// Also called directly by critic_mlp (csrc/kernels.h).
std::tuple<Tensor, Tensor, Tensor> critic_head_cuda(const Tensor& hidden_in,
                                                             const Tensor& weight_in,
                                                             const std::optional<Tensor>& bias_in,
                                                             int64_t n_joint, std::string_view activation,
                                                             double param) {
  check_critic_head(hidden_in, weight_in, bias_in, n_joint);
  const Activation act = checked_activation(std::string(activation));
  const DeviceGuard guard(hidden_in);
  const Tensor hidden = as_contiguous(hidden_in), w = as_contiguous(weight_in);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const Tensor bias = has_bias ? as_contiguous(*bias_in) : Tensor();
  const int64_t rows = hidden.size(0), h = hidden.size(1);
  Tensor scores = empty_on(hidden, {rows});
  Tensor pre = empty_on(hidden, {rows});
  Tensor bound = empty_on(hidden, {}, bound_scalar_type(hidden.scalar_type()));
  const cudaStream_t stream = guard.stream();
  dispatch_floating_and_reduced(hidden.scalar_type(), "critic_head_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, true>;
    scalar_t* ps = scores.mutable_data_ptr<scalar_t>();
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      critic_head_scores_kernel<A, scalar_t, acc_t>
          <<<grid_size(rows, kThreads / kLanes), kThreads, 0, stream>>>(
              hidden.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
              has_bias ? bias.const_data_ptr<scalar_t>() : nullptr, rows, h,
              static_cast<opmath_t<scalar_t>>(param), ps, pre.mutable_data_ptr<scalar_t>());
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
    launch_nwj_sums<scalar_t>(ps, n_joint, ps + n_joint, rows - n_joint, hidden,
                              bound.mutable_data_ptr<opmath_t<scalar_t>>(), stream);
  });
  return {bound, scores, pre};
}

std::tuple<Tensor, Tensor, Tensor> critic_head_backward_cuda(
    const Tensor& grad_bound_in, const std::optional<Tensor>& grad_scores_in,
    const Tensor& hidden_in, const Tensor& weight_in, const Tensor& scores_in,
    const Tensor& pre_in, int64_t n_joint, std::string_view activation, double param,
    const std::vector<bool>& output_mask) {
  const CriticHeadBackwardArgs args(grad_bound_in, grad_scores_in, hidden_in, weight_in, scores_in,
                                 pre_in, n_joint, activation, output_mask);
  const DeviceGuard guard(hidden_in);
  const Tensor &hidden = args.hidden, &w = args.weight, &scores = args.scores, &pre = args.pre;
  const Tensor &grad_scores = args.grad_scores, &grad_bound = args.grad_bound;
  const Activation act = args.act;
  const bool has_grad_scores = args.has_grad_scores, want_hidden = args.want_hidden, want_w = args.want_weight;
  const bool want_b = args.want_bias;
  const int64_t rows = args.rows, h = args.h;
  if (!args.any_wanted()) return args.grads();
  INFOMAX_CHECK((h + kLanes - 1) / kLanes <= 65535, "infomax_ext: critic_head supports at most ",
              65535 * kLanes, " hidden units on CUDA, got ", h);

  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const dim3 block(kLanes, kRowGroups);
  const dim3 grid(static_cast<unsigned int>((chunks + kRowGroups - 1) / kRowGroups),
                  static_cast<unsigned int>(std::max<int64_t>(1, (h + kLanes - 1) / kLanes)));
  const cudaStream_t stream = guard.stream();
  dispatch_floating_and_reduced(hidden.scalar_type(), "critic_head_backward_cuda", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    using acc_t = acc_type<scalar_t, true>;
    Tensor w_partial = want_w ? empty_on(hidden, {chunks, h}, scalar_type_of<acc_t>()) : Tensor();
    Tensor b_partial = want_b ? empty_on(hidden, {chunks}, scalar_type_of<acc_t>()) : Tensor();
    acc_t* pw_partial = want_w ? w_partial.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* pb_partial = want_b ? b_partial.mutable_data_ptr<acc_t>() : nullptr;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      critic_head_backward_kernel<A, scalar_t, acc_t><<<grid, block, 0, stream>>>(
          grad_bound.const_data_ptr<op_t>(), has_grad_scores ? grad_scores.const_data_ptr<scalar_t>() : nullptr,
          hidden.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          scores.const_data_ptr<scalar_t>(), pre.const_data_ptr<scalar_t>(), rows, h, n_joint,
          op_t(1) / op_t(n_joint), op_t(1) / op_t(rows - n_joint),
          static_cast<op_t>(param), want_hidden ? args.grad_hidden.mutable_data_ptr<scalar_t>() : nullptr,
          pw_partial, pb_partial);
      INFOMAX_CUDA_LAUNCH_CHECK();
    });
    if (want_w) {
      launch_column_sums<scalar_t, acc_t>(pw_partial, chunks, h,
                                          args.grad_weight.mutable_data_ptr<scalar_t>(), stream);
    }
    if (want_b) {
      launch_column_sums<scalar_t, acc_t>(pb_partial, chunks, 1, args.grad_bias.mutable_data_ptr<scalar_t>(),
                                          stream);
    }
  });
  return args.grads();
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CUDA, m) {
  m.impl("nwj_bound", TORCH_BOX(&nwj_bound_cuda));
  m.impl("nwj_bound_backward", TORCH_BOX(&nwj_bound_backward_cuda));
  m.impl("critic_head", TORCH_BOX(&critic_head_cuda));
  m.impl("critic_head_backward", TORCH_BOX(&critic_head_backward_cuda));
}

}  // namespace infomax_ext
