#pragma once
// The arguments of infonce_rows and infonce_rows_backward as both backends use them: checked
// (shapes, dtypes, devices) before any kernel runs, made contiguous, and for the backward op
// with its two gradients allocated.
#include <tuple>

#include "op_args.h"

namespace infomax_ext {

// infonce_rows: rows (R, C) and joint (R), one float32/float64 dtype and device, R, C >= 1.
struct InfoNceRowsArgs {
  Tensor rows, joint;
  int64_t r, c;

  InfoNceRowsArgs(const Tensor& rows_in, const Tensor& joint_in) {
    check_float32_or_64_tensor(rows_in, "rows", 2);
    check_float32_or_64_tensor(joint_in, "joint", 1);
    check_same(rows_in, joint_in, "rows", "joint");
    INFOMAX_CHECK(rows_in.size(0) >= 1 && rows_in.size(1) >= 1,
                  "infomax_ext: infonce_rows needs at least one row and one column, got rows of "
                  "shape ", shape_of(rows_in));
    INFOMAX_CHECK(joint_in.size(0) == rows_in.size(0), "infomax_ext: joint has ",
                  joint_in.size(0), " entries but rows has ", rows_in.size(0),
                  " rows (one joint score per row)");
    rows = as_contiguous(rows_in);
    joint = as_contiguous(joint_in);
    r = rows.size(0);
    c = rows.size(1);
  }
};

// infonce_rows_backward: the incoming gradient of the value (one value), the forward's
// arguments and its second output row_lse (R), and the gradients of rows (R, C) and joint (R).
struct InfoNceRowsBackwardArgs : InfoNceRowsArgs {
  Tensor grad, row_lse, grad_rows, grad_joint;

  InfoNceRowsBackwardArgs(const Tensor& grad_in, const Tensor& rows_in, const Tensor& joint_in,
                          const Tensor& row_lse_in)
      : InfoNceRowsArgs(rows_in, joint_in) {
    check_scalar_grad(grad_in, rows, "grad");
    check_float32_or_64_tensor(row_lse_in, "row_lse", 1);
    check_same(rows, row_lse_in, "rows", "row_lse");
    INFOMAX_CHECK(row_lse_in.size(0) == r, "infomax_ext: row_lse has ", row_lse_in.size(0),
                  " entries but rows has ", r, " rows (infonce_rows' second output)");
    grad = as_contiguous(grad_in);
    row_lse = as_contiguous(row_lse_in);
    grad_rows = empty_like_shape(rows);
    grad_joint = empty_like_shape(joint);
  }

  std::tuple<Tensor, Tensor> grads() const { return {grad_rows, grad_joint}; }
};

}  // namespace infomax_ext
