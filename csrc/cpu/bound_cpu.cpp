// CPU kernels of mi_bound (the value and the training objective of a bound of csrc/bounds.h
// from joint scores and negatives' scores) and of its backward. Sums run over fixed chunks of
// kScoresPerChunk scores, then over the chunks in order, in double: the same bits whatever the
// thread count, and for nwj the same bits as nwj_bound (csrc/cpu/critic_head_cpu.cpp sums alike).
// Each block of chunks first fills its terms in one vectorised loop (csrc/cpu/vec_loops.h: the
// math of csrc/cpu/vec_math.h through csrc/bounds.h; AVX-512, AVX2 or baseline builds, the
// same bits), the backward maps the scores to their gradients alike.
// Per-element terms are computed in the scores' dtype (as torch's own kernels), their sums in
// double. The log-mean-exp is shifted by the largest term (0 when that is not finite), so it
// neither overflows nor underflows; the forward returns the shift and the log of the shifted
// sum, which the backward takes instead of summing again.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../bound_args.h"
#include "vec_loops.h"

namespace infomax_ext {
namespace {

constexpr int64_t kScoresPerChunk = 64;
// Chunks filled and summed together: the terms of a block are computed in one vectorised loop
// into a buffer, then its chunks are summed side by side (independent additions in flight).
constexpr int64_t kChunksPerBlock = 8;
constexpr int64_t kScoresPerBlock = kScoresPerChunk * kChunksPerBlock;

int64_t chunk_count(int64_t n) { return (n + kScoresPerChunk - 1) / kScoresPerChunk; }

// out[r] = f(x[r]) for r < n, in parallel; f inlines into one vectorised loop per range.
template <typename scalar_t, typename F>
void map_scores(const scalar_t* x, int64_t n, scalar_t* out, const F& f) {
  torch::stable::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    fill_terms(x + begin, end - begin, out + begin, f);
  });
}

// out[c] = the sum of chunk c of a full block, each in order: the chunks side by side, one
// vector lane each.
template <typename acc_t, typename scalar_t>
INFOMAX_TARGET_CLONES void block_chunk_sums(const scalar_t* __restrict__ buf,
                                            acc_t* __restrict__ out) {
  acc_t sums[kChunksPerBlock] = {};
  for (int64_t i = 0; i < kScoresPerChunk; ++i) {
    for (int64_t c = 0; c < kChunksPerBlock; ++c) sums[c] += acc_t(buf[c * kScoresPerChunk + i]);
  }
  for (int64_t c = 0; c < kChunksPerBlock; ++c) out[c] = sums[c];
}

// sum over r < n of acc_t(term(x[r])): each chunk of kScoresPerChunk summed in order, then the
// chunks in order (the bits of a plain loop per chunk, whatever the thread count).
template <typename acc_t, typename scalar_t, typename F>
acc_t chunked_sum(const scalar_t* x, int64_t n, const F& term) {
  const int64_t chunks = chunk_count(n);
  const int64_t blocks = (n + kScoresPerBlock - 1) / kScoresPerBlock;
  std::vector<acc_t> partial(chunks, acc_t(0));
  torch::stable::parallel_for(0, blocks, 2, [&](int64_t begin, int64_t end) {
    alignas(64) scalar_t buf[kScoresPerBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * kScoresPerBlock;
      const int64_t count = std::min(n - first, kScoresPerBlock);
      fill_terms(x + first, count, buf, term);
      const int64_t c0 = b * kChunksPerBlock;
      if (count == kScoresPerBlock) {
        block_chunk_sums(buf, partial.data() + c0);
      } else {
        for (int64_t i = 0; i < count; i += kScoresPerChunk) {
          acc_t sum = 0;
          for (int64_t j = i; j < std::min(count, i + kScoresPerChunk); ++j) sum += acc_t(buf[j]);
          partial[c0 + i / kScoresPerChunk] = sum;
        }
      }
    }
  });
  acc_t total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

// max over r < n of term(x[r]); NaN when any term is NaN. In lanes (the largest of each lane,
// and whether a lane saw a NaN), combined at the end: max is exact, so the order is free.
template <typename scalar_t, typename F>
scalar_t chunked_max(const scalar_t* x, int64_t n, const F& term) {
  constexpr int kLanes = 16;
  const int64_t blocks = (n + kScoresPerBlock - 1) / kScoresPerBlock;
  std::vector<scalar_t> partial(blocks, scalar_t(0));
  std::vector<char> nan(blocks, 0);
  torch::stable::parallel_for(0, blocks, 2, [&](int64_t begin, int64_t end) {
    alignas(64) scalar_t buf[kScoresPerBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * kScoresPerBlock;
      const int64_t count = std::min(n - first, kScoresPerBlock);
      fill_terms(x + first, count, buf, term);
      scalar_t top[kLanes];
      scalar_t seen_nan[kLanes];  // != 0 where a lane saw a NaN
      for (int l = 0; l < kLanes; ++l) top[l] = buf[0], seen_nan[l] = 0;
      int64_t i = 0;
      for (; i + kLanes <= count; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const scalar_t v = buf[i + l];
          top[l] = v > top[l] ? v : top[l];
          seen_nan[l] = v != v ? scalar_t(1) : seen_nan[l];
        }
      }
      for (; i < count; ++i) {
        const scalar_t v = buf[i];
        top[0] = v > top[0] ? v : top[0];
        seen_nan[0] = v != v ? scalar_t(1) : seen_nan[0];
      }
      scalar_t best = top[0];
      bool any_nan = false;
      for (int l = 0; l < kLanes; ++l) {
        best = top[l] > best ? top[l] : best;
        any_nan = any_nan || seen_nan[l] != 0 || top[l] != top[l];
      }
      partial[b] = best;
      nan[b] = any_nan;
    }
  });
  scalar_t top = partial[0];
  for (int64_t b = 0; b < blocks; ++b) {
    if (nan[b]) return std::numeric_limits<scalar_t>::quiet_NaN();
    top = partial[b] > top ? partial[b] : top;
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
  const acc_t mean_joint = chunked_sum<acc_t>(tj, m, [](scalar_t t) { return t; }) / acc_t(m);
  acc_t reduced;
  if constexpr (Traits::reduction == BoundReduction::MeanOf) {
    reduced = chunked_sum<acc_t>(tn, k, [p](scalar_t t) {
                return bound_negative_term<B>(t, p);
              }) / acc_t(k);
  } else {
    const scalar_t top =
        chunked_max(tn, k, [p](scalar_t t) { return bound_negative_term<B>(t, p); });
    const scalar_t shift = std::isfinite(top) ? top : scalar_t(0);
    const acc_t sum = chunked_sum<acc_t>(tn, k, [p, shift](scalar_t t) {
      return bound_exp(bound_negative_term<B>(t, p) - shift);
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
        chunked_sum<acc_t>(tj, m, [](scalar_t t) { return js_joint_term(t); }) / acc_t(m) -
        chunked_sum<acc_t>(tn, k, [](scalar_t t) { return js_negative_term(t); }) / acc_t(k);
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
      // gj = (g / M where the value's gradient flows) + the JS objective's term.
      const scalar_t joint_part = value_part ? g * inv_m : scalar_t(0);
      if (js_part) {
        map_scores(tj, args.m, gj,
                   [=](scalar_t t) { return joint_part + js_joint_grad(t, go, inv_m); });
      } else {
        map_scores(tj, args.m, gj, [=](scalar_t) { return joint_part; });
      }
      // gn = the value's gradient through the reduction + the JS objective's term.
      const auto value_grad = [=](scalar_t t) {
        if constexpr (Traits::reduction == BoundReduction::MeanOf) {
          return bound_mean_negative_grad<B>(t, g, inv_k, p);
        } else {
          return bound_log_mean_exp_negative_grad<B>(t, g, shift, log_sum, p);
        }
      };
      if (value_part && js_part) {
        map_scores(tn, args.k, gn,
                   [=](scalar_t t) { return value_grad(t) + js_negative_grad(t, go, inv_k); });
      } else if (value_part) {
        map_scores(tn, args.k, gn, value_grad);
      } else if (js_part) {
        map_scores(tn, args.k, gn,
                   [=](scalar_t t) { return scalar_t(0) + js_negative_grad(t, go, inv_k); });
      } else {
        map_scores(tn, args.k, gn, [](scalar_t) { return scalar_t(0); });
      }
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
