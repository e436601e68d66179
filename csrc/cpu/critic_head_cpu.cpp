// CPU kernels of the NWJ bound  I = mean(t_joint) - mean(exp(t_shuffled - 1)):
// on its own (nwj_bound), and fused with the MI chain's last layer t = act(hidden . w + b)
// (critic_head), where rows [0, n_joint) of hidden are joint pairs and the rest shuffled pairs.
// Reductions use fixed row chunks summed in order, so results do not depend on thread count.
// bfloat16 and float16 scores: products, exp and sums in float32 (opmath_t); the bound is
// float32 (bound_scalar_type), scores and gradients in the input dtype.

#include <vector>

#include "../activations.h"
#include "../bounds.h"
#include "../op_args.h"

namespace infomax_ext {
namespace {

constexpr int64_t kRowsPerChunk = 64;

int64_t chunk_count(int64_t rows) { return (rows + kRowsPerChunk - 1) / kRowsPerChunk; }

// a . b over n entries, summed in kLanes independent partial sums (one cache line of
// the compute type) that the compiler vectorises, then combined in a fixed order: the same bits
// on every call, whatever the thread count. bfloat16 and float16 entries are summed in float32.
template <typename scalar_t, typename op_t = opmath_t<scalar_t>>
inline op_t dot_in_lanes(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                         int64_t n) {
  constexpr int kLanes = 64 / sizeof(op_t);
  op_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += op_t(a[j + l]) * op_t(b[j + l]);
  }
  for (int l = 0; j < n; ++j, ++l) lanes[l] += op_t(a[j]) * op_t(b[j]);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0];
}

// sum_{r < n_joint} t[r] and sum_{r >= n_joint} exp(t[r] - 1), reduced deterministically.
template <typename scalar_t, typename acc_t>
void nwj_sums(const scalar_t* t, int64_t rows, int64_t n_joint, acc_t* joint_sum, acc_t* marg_sum) {
  const int64_t chunks = chunk_count(rows);
  std::vector<acc_t> partial(2 * chunks, acc_t(0));
  torch::stable::parallel_for(0, chunks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc_t js = 0, ms = 0;
      for (int64_t r = c * kRowsPerChunk; r < std::min(rows, (c + 1) * kRowsPerChunk); ++r) {
        if (r < n_joint) {
          js += acc_t(t[r]);
        } else {
          ms += acc_t(bound_negative_term<MiBound::Nwj>(opmath_t<scalar_t>(t[r]),
                                                        opmath_t<scalar_t>(0)));
        }
      }
      partial[2 * c] = js;
      partial[2 * c + 1] = ms;
    }
  });
  acc_t js = 0, ms = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    js += partial[2 * c];
    ms += partial[2 * c + 1];
  }
  *joint_sum = js;
  *marg_sum = ms;
}

Tensor nwj_bound_cpu(const Tensor& t_joint_in, const Tensor& t_marg_in) {
  check_nwj_bound(t_joint_in, t_marg_in);
  const Tensor tj = as_contiguous(t_joint_in), tm = as_contiguous(t_marg_in);
  const int64_t nj = tj.size(0), nm = tm.size(0);
  Tensor bound = empty_on(tj, {}, bound_scalar_type(tj.scalar_type()));
  dispatch_floating_and_reduced(tj.scalar_type(), "nwj_bound_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    using acc_t = acc_type<scalar_t, false>;
    acc_t js, ms, unused;
    nwj_sums<scalar_t, acc_t>(tj.const_data_ptr<scalar_t>(), nj, nj, &js, &unused);
    nwj_sums<scalar_t, acc_t>(tm.const_data_ptr<scalar_t>(), nm, 0, &unused, &ms);
    *bound.mutable_data_ptr<op_t>() = static_cast<op_t>(js / acc_t(nj) - ms / acc_t(nm));
  });
  return bound;
}

std::tuple<Tensor, Tensor> nwj_bound_backward_cpu(const Tensor& grad,
                                                          const Tensor& t_joint_in,
                                                          const Tensor& t_marg_in) {
  check_nwj_bound(t_joint_in, t_marg_in);
  check_scalar_grad(grad, t_joint_in, "grad");
  const Tensor tj = as_contiguous(t_joint_in), tm = as_contiguous(t_marg_in);
  Tensor gj = empty_like_shape(tj), gm = empty_like_shape(tm);
  dispatch_floating_and_reduced(tj.scalar_type(), "nwj_bound_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    const op_t g = *grad.const_data_ptr<op_t>();
    const op_t inv_j = op_t(1) / op_t(tj.size(0)), inv_m = op_t(1) / op_t(tm.size(0));
    const scalar_t* ptm = tm.const_data_ptr<scalar_t>();
    scalar_t* pgj = gj.mutable_data_ptr<scalar_t>();
    scalar_t* pgm = gm.mutable_data_ptr<scalar_t>();
    for (int64_t r = 0; r < tj.size(0); ++r) {
      pgj[r] = scalar_t(mean_bound_score_grad<MiBound::Nwj>(true, op_t(0), g, inv_j, inv_m));
    }
    torch::stable::parallel_for(0, tm.size(0), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        pgm[r] = scalar_t(
            mean_bound_score_grad<MiBound::Nwj>(false, op_t(ptm[r]), g, inv_j, inv_m));
      }
    });
  });
  return {gj, gm};
}

}  // namespace

// Also called directly by critic_mlp (csrc/kernels.h).
std::tuple<Tensor, Tensor, Tensor> critic_head_cpu(const Tensor& hidden_in,
                                                            const Tensor& weight_in,
                                                            const std::optional<Tensor>& bias_in,
                                                            int64_t n_joint, std::string_view activation,
                                                            double param) {
  check_critic_head(hidden_in, weight_in, bias_in, n_joint);
  const Activation act = checked_activation(std::string(activation));
  const Tensor hidden = as_contiguous(hidden_in), w = as_contiguous(weight_in);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const int64_t rows = hidden.size(0), h = hidden.size(1);
  Tensor scores = empty_on(hidden, {rows});
  Tensor pre = empty_on(hidden, {rows});
  Tensor bound = empty_on(hidden, {}, bound_scalar_type(hidden.scalar_type()));
  dispatch_floating_and_reduced(hidden.scalar_type(), "critic_head_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    using acc_t = acc_type<scalar_t, false>;
    const scalar_t* ph = hidden.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    const op_t b = has_bias ? op_t(*bias_in->const_data_ptr<scalar_t>()) : op_t(0);
    const op_t p = static_cast<op_t>(param);
    scalar_t* ps = scores.mutable_data_ptr<scalar_t>();
    scalar_t* ppre = pre.mutable_data_ptr<scalar_t>();
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      torch::stable::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(h, 1)),
                       [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          ppre[r] = scalar_t(dot_in_lanes(ph + r * h, pw, h) + b);
          ps[r] = scalar_t(activation_value<A>(op_t(ppre[r]), p));
        }
      });
    });
    acc_t js, ms;
    nwj_sums<scalar_t, acc_t>(ps, rows, n_joint, &js, &ms);
    *bound.mutable_data_ptr<op_t>() =
        static_cast<op_t>(js / acc_t(n_joint) - ms / acc_t(rows - n_joint));
  });
  return {bound, scores, pre};
}

std::tuple<Tensor, Tensor, Tensor> critic_head_backward_cpu(
    const Tensor& grad_bound_in, const std::optional<Tensor>& grad_scores_in,
    const Tensor& hidden_in, const Tensor& weight_in, const Tensor& scores_in,
    const Tensor& pre_in, int64_t n_joint, std::string_view activation, double param,
    const std::vector<bool>& output_mask) {
  const CriticHeadBackwardArgs args(grad_bound_in, grad_scores_in, hidden_in, weight_in, scores_in,
                                 pre_in, n_joint, activation, output_mask);
  const Tensor &hidden = args.hidden, &w = args.weight, &scores = args.scores, &pre = args.pre;
  const Tensor &grad_scores = args.grad_scores, &grad_bound = args.grad_bound;
  const Activation act = args.act;
  const bool has_grad_scores = args.has_grad_scores, want_w = args.want_weight, want_b = args.want_bias;
  const int64_t rows = args.rows, h = args.h;
  if (!args.any_wanted()) return args.grads();

  dispatch_floating_and_reduced(hidden.scalar_type(), "critic_head_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    using acc_t = acc_type<scalar_t, false>;
    const scalar_t* ph = hidden.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    const scalar_t* ps = scores.const_data_ptr<scalar_t>();
    const scalar_t* ppre = pre.const_data_ptr<scalar_t>();
    const scalar_t* pgs = has_grad_scores ? grad_scores.const_data_ptr<scalar_t>() : nullptr;
    const op_t g = *grad_bound.const_data_ptr<op_t>();
    const op_t inv_j = op_t(1) / op_t(n_joint);
    const op_t inv_m = op_t(1) / op_t(rows - n_joint);
    const op_t p = static_cast<op_t>(param);
    scalar_t* pgh = args.want_hidden ? args.grad_hidden.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t chunks = chunk_count(rows);
    std::vector<op_t> w_partial(want_w ? chunks * h : 0, op_t(0));
    std::vector<acc_t> b_partial(chunks, acc_t(0));
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          op_t* __restrict__ wsum = want_w ? w_partial.data() + c * h : nullptr;
          acc_t bsum = 0;
          for (int64_t r = c * kRowsPerChunk; r < std::min(rows, (c + 1) * kRowsPerChunk); ++r) {
            op_t dscore =
                mean_bound_score_grad<MiBound::Nwj>(r < n_joint, op_t(ps[r]), g, inv_j, inv_m);
            if (pgs) dscore += op_t(pgs[r]);
            const op_t dpre = activation_grad<A>(dscore, op_t(ppre[r]), p);
            bsum += acc_t(dpre);
            const scalar_t* __restrict__ hr = ph + r * h;
            if (pgh) {
              scalar_t* __restrict__ ghr = pgh + r * h;
              for (int64_t j = 0; j < h; ++j) ghr[j] = scalar_t(dpre * op_t(pw[j]));
            }
            if (wsum) {
              for (int64_t j = 0; j < h; ++j) wsum[j] += dpre * op_t(hr[j]);
            }
          }
          b_partial[c] = bsum;
        }
      });
    });
    if (want_w) {
      scalar_t* pgw = args.grad_weight.mutable_data_ptr<scalar_t>();
      for (int64_t j = 0; j < h; ++j) {
        acc_t total = 0;
        for (int64_t c = 0; c < chunks; ++c) total += acc_t(w_partial[c * h + j]);
        pgw[j] = static_cast<scalar_t>(total);
      }
    }
    if (want_b) {
      acc_t total = 0;
      for (int64_t c = 0; c < chunks; ++c) total += b_partial[c];
      *args.grad_bias.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total);
    }
  });
  return args.grads();
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("nwj_bound", TORCH_BOX(&nwj_bound_cpu));
  m.impl("nwj_bound_backward", TORCH_BOX(&nwj_bound_backward_cpu));
  m.impl("critic_head", TORCH_BOX(&critic_head_cpu));
  m.impl("critic_head_backward", TORCH_BOX(&critic_head_backward_cpu));
}

}  // namespace infomax_ext
