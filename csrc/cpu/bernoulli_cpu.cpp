// CPU kernels of bernoulli_loglik (the Bernoulli log-likelihood of a decoder's probabilities)
// and of its backward; the per-element math is csrc/bernoulli.h's.
//   out[r]        = sum_j term(p[r, j], x[r % N, j])
//   grad_p[r, j]  = grad[r] d term / d p
//   grad_x[i, j]  = sum_s grad[s N + i] d term / d x   (s = 0, 1, ... in order)
// Rows run in parallel; each row's terms are computed in p's dtype by one vectorised loop
// (AVX-512, AVX2 and baseline builds: csrc/cpu/vec_loops.h) and summed in double in a fixed
// order: the same bits whatever the thread count, and the same on every x86-64 CPU.
#include <algorithm>

#include "../bernoulli.h"
#include "../bernoulli_args.h"
#include "vec_loops.h"

namespace infomax_ext {
namespace {

template <typename T>
INFOMAX_TARGET_CLONES void fill_bernoulli_terms(const T* __restrict__ p, const T* __restrict__ x,
                                                int64_t count, T* __restrict__ out) {
  for (int64_t j = 0; j < count; ++j) out[j] = bernoulli_term(p[j], x[j]);
}

template <typename T>
INFOMAX_TARGET_CLONES void fill_bernoulli_grad_p(const T* __restrict__ p,
                                                 const T* __restrict__ x, T g, int64_t count,
                                                 T* __restrict__ out) {
  for (int64_t j = 0; j < count; ++j) out[j] = bernoulli_grad_p(g, p[j], x[j]);
}

// out[j] = g d term / d x (first sample) or out[j] + g d term / d x.
template <typename T>
INFOMAX_TARGET_CLONES void add_bernoulli_grad_x(const T* __restrict__ p, T g, int64_t count,
                                                bool first, T* __restrict__ out) {
  if (first) {
    for (int64_t j = 0; j < count; ++j) out[j] = g * bernoulli_grad_x(p[j]);
  } else {
    for (int64_t j = 0; j < count; ++j) out[j] = out[j] + g * bernoulli_grad_x(p[j]);
  }
}

// The sum of one row's terms, in acc_t.
template <typename scalar_t, typename acc_t>
acc_t row_loglik(const scalar_t* p, const scalar_t* x, int64_t d) {
  alignas(64) scalar_t buf[kTermBlock];
  acc_t lanes[kSumLanes] = {};
  for (int64_t first = 0; first < d; first += kTermBlock) {
    const int64_t count = std::min(kTermBlock, d - first);
    fill_bernoulli_terms(p + first, x + first, count, buf);
    add_to_lanes(buf, count, lanes);
  }
  return lanes_total(lanes);
}

Tensor bernoulli_loglik_cpu(const Tensor& p, const Tensor& x) {
  const BernoulliArgs args(p, x);
  Tensor out = empty_on(args.p, {args.m});
  dispatch_floating(args.p.scalar_type(), "bernoulli_loglik_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, false>;
    const scalar_t* pp = args.p.const_data_ptr<scalar_t>();
    const scalar_t* xp = args.x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t d = args.d, n = args.n;
    torch::stable::parallel_for(0, args.m, row_grain(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        o[r] = static_cast<scalar_t>(row_loglik<scalar_t, acc_t>(pp + r * d, xp + (r % n) * d, d));
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> bernoulli_loglik_backward_cpu(const Tensor& grad, const Tensor& p,
                                                         const Tensor& x,
                                                         const std::vector<bool>& output_mask) {
  const BernoulliBackwardArgs args(grad, p, x, output_mask);
  dispatch_floating(args.p.scalar_type(), "bernoulli_loglik_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const scalar_t* pp = args.p.const_data_ptr<scalar_t>();
    const scalar_t* xp = args.x.const_data_ptr<scalar_t>();
    const scalar_t* g = args.grad.const_data_ptr<scalar_t>();
    const int64_t d = args.d, n = args.n, s = args.m / args.n;
    if (args.want_p) {
      scalar_t* gp = args.grad_p.mutable_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, args.m, row_grain(d), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          fill_bernoulli_grad_p(pp + r * d, xp + (r % n) * d, g[r], d, gp + r * d);
        }
      });
    }
    if (args.want_x) {
      scalar_t* gx = args.grad_x.mutable_data_ptr<scalar_t>();
      torch::stable::parallel_for(0, n, row_grain(d * s), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          for (int64_t smp = 0; smp < s; ++smp) {
            const int64_t r = smp * n + i;
            add_bernoulli_grad_x(pp + r * d, g[r], d, smp == 0, gx + i * d);
          }
        }
      });
    }
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("bernoulli_loglik", TORCH_BOX(&bernoulli_loglik_cpu));
  m.impl("bernoulli_loglik_backward", TORCH_BOX(&bernoulli_loglik_backward_cpu));
}

}  // namespace infomax_ext
