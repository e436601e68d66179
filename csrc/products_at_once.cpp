// Two independent matrix products in one call, run at once where that is faster (csrc/gemm.h,
// side_by_side: CPU tensors, exactly two intra-op threads):
//   linear_grads(grad, input, weight) -> (grad W, grad^T input): a Linear layer's input and
//     weight gradients (critic_mlp_backward computes each hidden layer's this way);
//   mm_pair(a, b, c, d) -> (a b, c d) (paired_linear's narrow latent-column products).
// bench/common.py replays ours' products through them. Device-agnostic
// (CompositeExplicitAutograd): the products go through the dispatcher.
#include <tuple>

#include "checks.h"
#include "gemm.h"
#include "tensor.h"

namespace infomax_ext {
namespace {

std::tuple<Tensor, Tensor> linear_grads_op(const Tensor& grad, const Tensor& input,
                                           const Tensor& weight) {
  check_float_tensor(grad, "grad", 2);
  check_float_tensor(input, "input", 2);
  check_float_tensor(weight, "weight", 2);
  check_same(grad, input, "grad", "input");
  check_same(grad, weight, "grad", "weight");
  INFOMAX_CHECK(input.size(0) == grad.size(0), "infomax_ext: input has ", input.size(0),
                " rows but grad has ", grad.size(0));
  INFOMAX_CHECK(weight.size(0) == grad.size(1) && weight.size(1) == input.size(1),
                "infomax_ext: weight has shape ", shape_of(weight), ", expected [", grad.size(1),
                ", ", input.size(1), "] (grad's columns, input's columns)");
  auto [grad_input, grad_weight] = linear_grads(grad, input, weight);
  return {grad_input, grad_weight};
}

std::tuple<Tensor, Tensor> mm_pair_op(const Tensor& a, const Tensor& b, const Tensor& c,
                                      const Tensor& d) {
  check_float_tensor(a, "a", 2);
  check_float_tensor(b, "b", 2);
  check_float_tensor(c, "c", 2);
  check_float_tensor(d, "d", 2);
  check_same(a, b, "a", "b");
  check_same(a, c, "a", "c");
  check_same(a, d, "a", "d");
  INFOMAX_CHECK(a.size(1) == b.size(0), "infomax_ext: a has shape ", shape_of(a), " and b ",
                shape_of(b), ": a's columns must equal b's rows");
  INFOMAX_CHECK(c.size(1) == d.size(0), "infomax_ext: c has shape ", shape_of(c), " and d ",
                shape_of(d), ": c's columns must equal d's rows");
  auto [ab, cd] = mm_pair(a, b, c, d);
  return {ab, cd};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CompositeExplicitAutograd, m) {
  m.impl("linear_grads", TORCH_BOX(&linear_grads_op));
  m.impl("mm_pair", TORCH_BOX(&mm_pair_op));
}

}  // namespace infomax_ext
