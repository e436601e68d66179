// CPU kernels of infonce_rows (InfoNCE from rows of an all-pairs score matrix) and of its
// backward:
//   row_lse_i = logsumexp_j rows[i, j]   (shifted by the row's largest entry, 0 when that is
//                                          not finite, as torch.logsumexp)
//   value     = mean_i (joint_i - row_lse_i) + log C
//   d value / d rows[i, j] = -exp(rows[i, j] - row_lse_i) / R,   d value / d joint_i = 1 / R.
// Rows run in parallel; each row's exponentials are computed in the scores' dtype by the
// vectorised exp of csrc/cpu/vec_math.h (csrc/cpu/vec_loops.h), summed in double in a fixed
// order, and the rows' terms are summed in order afterwards: the same bits whatever the thread
// count. Non-finite entries give what torch.logsumexp gives: a row of -inf has row_lse -inf, a
// row holding +inf has +inf, a NaN makes its row's row_lse NaN.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../bounds.h"
#include "../infonce_args.h"
#include "vec_loops.h"

namespace infomax_ext {
namespace {

// The largest of x[0..c), NaN when any entry is NaN.
template <typename scalar_t>
scalar_t row_max(const scalar_t* x, int64_t c) {
  scalar_t top = x[0];
  bool nan = false;
  for (int64_t j = 0; j < c; ++j) {
    top = x[j] > top ? x[j] : top;
    nan = nan || x[j] != x[j];
  }
  return nan ? std::numeric_limits<scalar_t>::quiet_NaN() : top;
}

// log sum_j exp(x[j]) for one row of c entries, in acc_t.
template <typename scalar_t, typename acc_t>
acc_t row_log_sum_exp(const scalar_t* x, int64_t c) {
  const scalar_t top = row_max(x, c);
  const scalar_t shift = std::isfinite(top) ? top : scalar_t(0);
  alignas(64) scalar_t buf[kTermBlock];
  acc_t lanes[kSumLanes] = {};
  for (int64_t first = 0; first < c; first += kTermBlock) {
    const int64_t count = std::min(kTermBlock, c - first);
    fill_terms(x + first, count, buf, [shift](scalar_t t) { return bound_exp(t - shift); });
    add_to_lanes(buf, count, lanes);
  }
  return acc_t(shift) + std::log(lanes_total(lanes));
}

std::tuple<Tensor, Tensor> infonce_rows_cpu(const Tensor& rows, const Tensor& joint) {
  const InfoNceRowsArgs args(rows, joint);
  Tensor value = empty_on(args.rows, {});
  Tensor row_lse = empty_on(args.rows, {args.r});
  dispatch_floating(args.rows.scalar_type(), "infonce_rows_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, false>;
    const scalar_t* x = args.rows.const_data_ptr<scalar_t>();
    const scalar_t* tj = args.joint.const_data_ptr<scalar_t>();
    scalar_t* lse_out = row_lse.mutable_data_ptr<scalar_t>();
    const int64_t c = args.c;
    std::vector<acc_t> terms(args.r);
    torch::stable::parallel_for(0, args.r, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t lse = row_log_sum_exp<scalar_t, acc_t>(x + i * c, c);
        lse_out[i] = static_cast<scalar_t>(lse);
        terms[i] = acc_t(tj[i]) - lse;
      }
    });
    acc_t total = 0;
    for (int64_t i = 0; i < args.r; ++i) total += terms[i];
    *value.mutable_data_ptr<scalar_t>() =
        static_cast<scalar_t>(total / acc_t(args.r) + std::log(acc_t(c)));
  });
  return {value, row_lse};
}

std::tuple<Tensor, Tensor> infonce_rows_backward_cpu(const Tensor& grad, const Tensor& rows,
                                                     const Tensor& joint, const Tensor& row_lse) {
  const InfoNceRowsBackwardArgs args(grad, rows, joint, row_lse);
  dispatch_floating(args.rows.scalar_type(), "infonce_rows_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const scalar_t* x = args.rows.const_data_ptr<scalar_t>();
    const scalar_t* lse = args.row_lse.const_data_ptr<scalar_t>();
    scalar_t* gr = args.grad_rows.mutable_data_ptr<scalar_t>();
    scalar_t* gj = args.grad_joint.mutable_data_ptr<scalar_t>();
    const int64_t c = args.c;
    // The mean's gradient g / R, and the log-sum-exp's: -(g / R) exp(x - row_lse).
    const scalar_t per_row = *args.grad.const_data_ptr<scalar_t>() / scalar_t(args.r);
    const scalar_t neg = -per_row;
    torch::stable::parallel_for(0, args.r, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t l = lse[i];
        fill_terms(x + i * c, c, gr + i * c,
                   [neg, l](scalar_t t) { return neg * bound_exp(t - l); });
        gj[i] = per_row;
      }
    });
  });
  return args.grads();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("infonce_rows", TORCH_BOX(&infonce_rows_cpu));
  m.impl("infonce_rows_backward", TORCH_BOX(&infonce_rows_backward_cpu));
}

}  // namespace infomax_ext
