// CPU kernels of the hidden layers of critic_mlp (csrc/critic_mlp.cpp): an activation applied to a
// (rows, H) pre-activation, and its backward fused with the bias gradient: one pass that
// multiplies the incoming gradient by f' in place and sums its columns. Column sums run over
// fixed chunks of rows, then over the chunks in order: the same bits whatever the thread count.
// bfloat16 and float16 tensors are computed on in float32 (opmath_t), the column sums too, and
// rounded to their dtype once when stored.
#include <algorithm>
#include <optional>
#include <vector>

#include "../activations.h"
#include "../kernels.h"
#include "vec_loops.h"

namespace infomax_ext {
namespace {

constexpr int64_t kRowsPerChunk = 32;

// The loops over the H units of one row, run through run_vectorised (csrc/cpu/vec_loops.h):
// built for AVX-512, AVX2 and the x86-64 baseline, so that a transcendental activation runs 4-16
// lanes wide. In place and out of place are separate loops, so that neither needs an alias check.

// x += bias (when kBias), then x = f(x).
template <Activation A, bool kBias, typename scalar_t>
inline void activate_in_place(scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ bias, int64_t h,
                                             opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < h; ++j) {
    op_t v = op_t(x[j]);
    if constexpr (kBias) v = op_t(scalar_t(v + op_t(bias[j])));  // the pre-activation's rounding
    x[j] = scalar_t(activation_value<A>(v, p));
  }
}

// x += bias (when kBias; x keeps the pre-activation), then y = f(x).
template <Activation A, bool kBias, typename scalar_t>
inline void activate_into(scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ bias,
                                         scalar_t* __restrict__ y, int64_t h,
                                         opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < h; ++j) {
    op_t v = op_t(x[j]);
    if constexpr (kBias) {
      x[j] = scalar_t(v + op_t(bias[j]));
      v = op_t(x[j]);
    }
    y[j] = scalar_t(activation_value<A>(v, p));
  }
}

// g = g f'(x) in place (identity: unchanged), and sum += g when kSum.
template <Activation A, bool kSum, typename scalar_t>
inline void gradient_units(scalar_t* __restrict__ g,
                                          const scalar_t* __restrict__ x,
                                          opmath_t<scalar_t>* __restrict__ sum, int64_t h,
                                          opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < h; ++j) {
    op_t v = op_t(g[j]);
    if constexpr (A != Activation::Identity) {
      v = activation_grad<A>(v, op_t(x[j]), p);
      g[j] = scalar_t(v);
    }
    if constexpr (kSum) sum[j] += op_t(scalar_t(v));
  }
}

}  // namespace

Tensor activation_forward_cpu(const Tensor& pre, const std::optional<Tensor>& bias,
                              Activation act, double param, bool keep_pre) {
  const int64_t rows = pre.size(0), h = pre.size(1);
  const bool has_bias = bias.has_value();
  if (!has_bias && act == Activation::Identity) return pre;
  Tensor out = keep_pre && act != Activation::Identity ? empty_like_shape(pre) : pre;
  dispatch_floating_and_reduced(pre.scalar_type(), "critic_mlp", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    scalar_t* px = pre.mutable_data_ptr<scalar_t>();
    scalar_t* py = out.mutable_data_ptr<scalar_t>();
    const scalar_t* pb = has_bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    const op_t p = static_cast<op_t>(param);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      torch::stable::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(h, 1)),
                                  [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          scalar_t* xr = px + r * h;
          run_vectorised<scalar_t>([&] {
            if (py == px) {
              pb ? activate_in_place<A, true>(xr, pb, h, p)
                 : activate_in_place<A, false>(xr, pb, h, p);
            } else {
              pb ? activate_into<A, true>(xr, pb, py + r * h, h, p)
                 : activate_into<A, false>(xr, pb, py + r * h, h, p);
            }
          });
        }
      });
    });
  });
  return act == Activation::Identity ? pre : out;
}

Tensor activation_backward_cpu(const Tensor& grad, const Tensor& at, Activation act, double param,
                               bool want_bias) {
  const int64_t rows = grad.size(0), h = grad.size(1);
  const int64_t chunks = std::max<int64_t>(1, (rows + kRowsPerChunk - 1) / kRowsPerChunk);
  Tensor bias_grad = want_bias ? empty_on(grad, {h}) : empty_on(grad, {0});
  if (act == Activation::Identity && !want_bias) return bias_grad;  // nothing to do
  dispatch_floating_and_reduced(grad.scalar_type(), "critic_mlp", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    using acc_t = acc_type<scalar_t, false>;
    scalar_t* pg = grad.mutable_data_ptr<scalar_t>();
    const scalar_t* px = at.const_data_ptr<scalar_t>();
    const op_t p = static_cast<op_t>(param);
    std::vector<op_t> partial(want_bias ? chunks * h : 0, op_t(0));
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          op_t* __restrict__ sum = want_bias ? partial.data() + c * h : nullptr;
          for (int64_t r = c * kRowsPerChunk; r < std::min(rows, (c + 1) * kRowsPerChunk); ++r) {
            run_vectorised<scalar_t>([&] {
              sum ? gradient_units<A, true>(pg + r * h, px + r * h, sum, h, p)
                  : gradient_units<A, false>(pg + r * h, px + r * h, sum, h, p);
            });
          }
        }
      });
    });
    if (want_bias) {
      scalar_t* pb = bias_grad.mutable_data_ptr<scalar_t>();
      for (int64_t j = 0; j < h; ++j) {
        acc_t total = 0;
        for (int64_t c = 0; c < chunks; ++c) total += acc_t(partial[c * h + j]);
        pb[j] = static_cast<scalar_t>(total);
      }
    }
  });
  return bias_grad;
}

}  // namespace infomax_ext
