// Backend choice for the products of a Linear layer (csrc/gemm.h).
#include "gemm.h"

#include <mutex>
#include <stdexcept>

namespace infomax_ext {
namespace {

Tensor onednn_linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
  return call_op("mkldnn::_linear_pointwise", "", x, w, b, std::string("none"),
                 std::vector<std::optional<double>>{}, std::optional<std::string>{});
}

// Whether this torch runs oneDNN's linear: found out once, on tensors of our own (so no
// argument of a caller's can make the answer wrong).
bool onednn_available() {
  static bool available = false;
  static std::once_flag probed;
  std::call_once(probed, [] {
    try {
      Tensor one = torch::stable::empty({1, 1}, ScalarType::Float);
      torch::stable::zero_(one);
      onednn_linear(one, one, std::nullopt);
      available = true;
    } catch (const std::exception&) {
      available = false;
    }
  });
  return available;
}

}  // namespace

bool onednn_linear_serves(const Tensor& x, const Tensor& w) {
  // At kOneDnnMinFlops or more neither operand is empty (oneDNN is never given one).
  return x.is_cpu() && x.scalar_type() == ScalarType::Float && x.is_contiguous() &&
         w.is_contiguous() &&
         2.0 * static_cast<double>(x.size(0)) * static_cast<double>(w.numel()) >=
             kOneDnnMinFlops &&
         onednn_available();
}

Tensor linear_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b,
                      bool* bias_added) {
  if (onednn_linear_serves(x, w)) {
    *bias_added = true;
    return onednn_linear(x, w, b);
  }
  *bias_added = !b.has_value();
  return mm(x, t(w));
}

Tensor linear_input_grad(const Tensor& g, const Tensor& w) {
  const Tensor w_t = t(w);
  if (onednn_linear_serves(g, w)) return onednn_linear(g, w_t, std::nullopt);
  return mm(g, w);
}

Tensor linear_weight_grad(const Tensor& g, const Tensor& x) { return mm(t(g), x); }

std::pair<Tensor, Tensor> linear_grads(const Tensor& g, const Tensor& x, const Tensor& w) {
  Tensor grad_x, grad_w;
  side_by_side(g, [&] { grad_x = linear_input_grad(g, w); },
               [&] { grad_w = linear_weight_grad(g, x); });
  return {grad_x, grad_w};
}

std::pair<Tensor, Tensor> mm_pair(const Tensor& a, const Tensor& b, const Tensor& c,
                                  const Tensor& d) {
  Tensor ab, cd;
  side_by_side(a, [&] { ab = mm(a, b); }, [&] { cd = mm(c, d); });
  return {ab, cd};
}

}  // namespace infomax_ext
