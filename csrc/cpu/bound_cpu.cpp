// CPU kernels of mi_bound (the value and the training objective of a bound of csrc/bounds.h
// from joint scores and negatives' scores) and of its backward. Sums run over fixed chunks of
// kScoresPerChunk scores, then over the chunks in order, in double: the same bits whatever the
// thread count, and for nwj the same bits as nwj_bound (csrc/cpu/nwj_cpu.cpp sums alike).
// Per-element terms are computed in the scores' dtype (as torch's own kernels), their sums in
// double. The log-mean-exp is shifted by the largest term (0 when that is not finite), so it
// neither overflows nor underflows; the forward returns the shift and the log of the shifted
// sum, which the backward takes instead of summing again.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../bound_args.h"

namespace infomax_ext {
namespace {

constexpr int64_t kScoresPerChunk = 64;

int64_t chunk_count(int64_t n) { return (n + kScoresPerChunk - 1) / kScoresPerChunk; }

// sum over r < n of term(r) (acc_t), chunk by chunk, then the chunks in order.
template <typename acc_t, typename F>
acc_t chunked_sum(int64_t n, const F& term) {
  const int64_t chunks = chunk_count(n);
  std::vector<acc_t> partial(chunks, acc_t(0));
  torch::stable::parallel_for(0, chunks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc_t sum = 0;
      for (int64_t r = c * kScoresPerChunk; r < std::min(n, (c + 1) * kScoresPerChunk); ++r) {
        sum += term(r);
      }
      partial[c] = sum;
    }
  });
  acc_t total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

// max over r < n of term(r); NaN when any term is NaN.
template <typename T, typename F>
T chunked_max(int64_t n, const F& term) {
  const int64_t chunks = chunk_count(n);
  std::vector<T> partial(chunks, T(0));
  torch::stable::parallel_for(0, chunks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * kScoresPerChunk;
      T top = term(first);
      for (int64_t r = first + 1; r < std::min(n, first + kScoresPerChunk); ++r) {
        const T v = term(r);
        top = (v > top || v != v) && top == top ? v : top;
      }
      partial[c] = top;
    }
  });
  T top = partial[0];
  for (int64_t c = 1; c < chunks; ++c) {
    top = (partial[c] > top || partial[c] != partial[c]) && top == top ? partial[c] : top;
  }
  return top;
}

// The reductions of bound B: value, objective, and (LogMeanExpOf) the log-sum-exp of the
// negative terms as shift + log_sum, shift the largest term (0 when not finite), log_sum =
// log sum_k exp(n(t_k) - shift). Per-element terms in scalar_t, sums in acc_t.
template <typename scalar_t, typename acc_t>
struct BoundSums {
  acc_t value, objective;
  scalar_t shift, log_sum;
};

// kObjective: also the JS objective's sums (the backward, summing again, needs only the shift
// and log_sum).
template <MiBound B, typename scalar_t, typename acc_t, bool kObjective = true>
BoundSums<scalar_t, acc_t> bound_sums(const scalar_t* tj, int64_t m, const scalar_t* tn, int64_t k,
                                      scalar_t p) {
  using Traits = BoundTraits<B>;
  BoundSums<scalar_t, acc_t> out{0, 0, 0, 0};
  const acc_t mean_joint = chunked_sum<acc_t>(m, [&](int64_t r) { return acc_t(tj[r]); }) / acc_t(m);
  acc_t reduced;
  if constexpr (Traits::reduction == BoundReduction::MeanOf) {
    reduced = chunked_sum<acc_t>(k, [&](int64_t r) {
                return acc_t(bound_negative_term<B>(tn[r], p));
              }) / acc_t(k);
  } else {
    const scalar_t top =
        chunked_max<scalar_t>(k, [&](int64_t r) { return bound_negative_term<B>(tn[r], p); });
    const scalar_t shift = std::isfinite(top) ? top : scalar_t(0);
    const acc_t sum = chunked_sum<acc_t>(k, [&](int64_t r) {
      return acc_t(std::exp(bound_negative_term<B>(tn[r], p) - shift));
    });
    const acc_t log_sum = std::log(sum);
    out.shift = shift;
    out.log_sum = static_cast<scalar_t>(log_sum);
    reduced = acc_t(shift) + log_sum - std::log(acc_t(k));
  }
  out.value = mean_joint - reduced;
  if constexpr (Traits::offset != 0) out.value += acc_t(Traits::offset);
  if constexpr (Traits::objective == BoundObjective::JensenShannon && kObjective) {
    out.objective =
        chunked_sum<acc_t>(m, [&](int64_t r) { return acc_t(js_joint_term(tj[r])); }) / acc_t(m) -
        chunked_sum<acc_t>(k, [&](int64_t r) { return acc_t(js_negative_term(tn[r])); }) / acc_t(k);
  } else {
    out.objective = out.value;
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor> mi_bound_cpu(const Tensor& t_joint, const Tensor& t_negatives,
                                                std::string_view bound, double param) {
  const MiBoundArgs args(t_joint, t_negatives, bound, param);
  Tensor value = empty_on(args.t_joint, {});
  Tensor objective = empty_on(args.t_joint, {});
  Tensor log_sum_exp = empty_on(args.t_joint, {2});
  dispatch_floating(args.t_joint.scalar_type(), "mi_bound_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, false>;
    dispatch_bound(args.bound, [&](auto tag) {
      constexpr MiBound B = decltype(tag)::value;
      const BoundSums<scalar_t, acc_t> sums = bound_sums<B, scalar_t, acc_t>(
          args.t_joint.const_data_ptr<scalar_t>(), args.m,
          args.t_negatives.const_data_ptr<scalar_t>(), args.k, static_cast<scalar_t>(param));
      *value.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(sums.value);
      *objective.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(sums.objective);
      scalar_t* parts = log_sum_exp.mutable_data_ptr<scalar_t>();
      parts[0] = sums.shift;
      parts[1] = sums.log_sum;
    });
  });
  return {value, objective, log_sum_exp};
}

std::tuple<Tensor, Tensor> mi_bound_backward_cpu(const std::optional<Tensor>& grad_value,
                                                 const std::optional<Tensor>& grad_objective,
                                                 const Tensor& t_joint, const Tensor& t_negatives,
                                                 std::string_view bound, double param,
                                                 const std::optional<Tensor>& log_sum_exp) {
  const MiBoundBackwardArgs args(grad_value, grad_objective, t_joint, t_negatives, bound, param,
                                 log_sum_exp);
  dispatch_floating(args.t_joint.scalar_type(), "mi_bound_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, false>;
    const scalar_t* tj = args.t_joint.const_data_ptr<scalar_t>();
    const scalar_t* tn = args.t_negatives.const_data_ptr<scalar_t>();
    scalar_t* gj = args.grad_joint.mutable_data_ptr<scalar_t>();
    scalar_t* gn = args.grad_negatives.mutable_data_ptr<scalar_t>();
    const scalar_t p = static_cast<scalar_t>(param);
    const scalar_t inv_m = scalar_t(1) / scalar_t(args.m), inv_k = scalar_t(1) / scalar_t(args.k);
    const scalar_t gv = args.has_grad_value ? *args.grad_value.const_data_ptr<scalar_t>() : scalar_t(0);
    const scalar_t go =
        args.has_grad_objective ? *args.grad_objective.const_data_ptr<scalar_t>() : scalar_t(0);
    dispatch_bound(args.bound, [&](auto tag) {
      constexpr MiBound B = decltype(tag)::value;
      using Traits = BoundTraits<B>;
      constexpr bool js = Traits::objective == BoundObjective::JensenShannon;
      // The gradient reaching the value's formula, and the one reaching the JS objective's.
      const bool value_part = args.has_grad_value || (!js && args.has_grad_objective);
      const scalar_t g = !js && args.has_grad_value && args.has_grad_objective ? gv + go
                         : args.has_grad_value                                 ? gv
                                                                               : go;
      const bool js_part = js && args.has_grad_objective;
      scalar_t shift = 0, log_sum = 0;
      if constexpr (Traits::reduction == BoundReduction::LogMeanExpOf) {
        if (value_part && args.has_log_sum_exp) {
          shift = args.log_sum_exp.const_data_ptr<scalar_t>()[0];
          log_sum = args.log_sum_exp.const_data_ptr<scalar_t>()[1];
        } else if (value_part) {
          const BoundSums<scalar_t, acc_t> sums =
              bound_sums<B, scalar_t, acc_t, false>(tj, args.m, tn, args.k, p);
          shift = sums.shift;
          log_sum = sums.log_sum;
        }
      }
      torch::stable::parallel_for(0, args.m, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          scalar_t d = value_part ? g * inv_m : scalar_t(0);
          if (js_part) d += js_joint_grad(tj[r], go, inv_m);
          gj[r] = d;
        }
      });
      torch::stable::parallel_for(0, args.k, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          scalar_t d = 0;
          if (value_part) {
            if constexpr (Traits::reduction == BoundReduction::MeanOf) {
              d = bound_mean_negative_grad<B>(tn[r], g, inv_k, p);
            } else {
              d = bound_log_mean_exp_negative_grad<B>(tn[r], g, shift, log_sum, p);
            }
          }
          if (js_part) d += js_negative_grad(tn[r], go, inv_k);
          gn[r] = d;
        }
      });
    });
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("mi_bound", TORCH_BOX(&mi_bound_cpu));
  m.impl("mi_bound_backward", TORCH_BOX(&mi_bound_backward_cpu));
}

}  // namespace infomax_ext
