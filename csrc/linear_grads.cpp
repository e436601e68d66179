// linear_grads: a Linear layer's input and weight gradients, (grad W, grad^T input), in one call
// that runs the two products at once where that is faster (csrc/gemm.h, side_by_side: CPU
// tensors, exactly two intra-op threads). critic_mlp_backward computes each hidden layer's
// gradients this way; bench/common.py replays ours' products through it. Device-agnostic
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

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CompositeExplicitAutograd, m) {
  m.impl("linear_grads", TORCH_BOX(&linear_grads_op));
}

}  // namespace infomax_ext
