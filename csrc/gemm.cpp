// Backend choice for the products of a Linear layer (csrc/gemm.h).
#include "gemm.h"

#include <atomic>
#include <stdexcept>

namespace infomax_ext {
namespace {

// 1: oneDNN's linear answered; 0: not tried yet; -1: this torch has none (then never again).
std::atomic<int> onednn_state{0};

Tensor onednn_linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b,
                     const char* epilogue) {
  return call_op("mkldnn::_linear_pointwise", "", x, w, b, std::string(epilogue),
                 std::vector<std::optional<double>>{}, std::optional<std::string>{});
}

// oneDNN's linear, or nullopt when this torch has none (found out once, on the first call).
std::optional<Tensor> try_onednn_linear(const Tensor& x, const Tensor& w,
                                        const std::optional<Tensor>& b, const char* epilogue) {
  if (onednn_state.load(std::memory_order_relaxed) > 0) return onednn_linear(x, w, b, epilogue);
  try {
    Tensor y = onednn_linear(x, w, b, epilogue);
    onednn_state.store(1, std::memory_order_relaxed);
    return y;
  } catch (const std::exception&) {
    onednn_state.store(-1, std::memory_order_relaxed);
    return std::nullopt;
  }
}

}  // namespace

bool onednn_linear_serves(const Tensor& x) {
  return x.is_cpu() && x.scalar_type() == ScalarType::Float &&
         onednn_state.load(std::memory_order_relaxed) >= 0;
}

Tensor linear_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b, bool relu,
                      bool* bias_added, bool* relu_applied) {
  if (onednn_linear_serves(x) && w.is_contiguous()) {
    if (auto y = try_onednn_linear(x, w, b, relu ? "relu" : "none")) {
      *bias_added = true;
      *relu_applied = relu;
      return *y;
    }
  }
  *bias_added = !b.has_value();
  *relu_applied = false;
  return mm(x, t(w));
}

Tensor linear_input_grad(const Tensor& g, const Tensor& w) {
  if (onednn_linear_serves(g) && w.is_contiguous()) {
    if (auto y = try_onednn_linear(g, t(w), std::nullopt, "none")) return *y;
  }
  return mm(g, w);
}

Tensor linear_weight_grad(const Tensor& g, const Tensor& x) { return mm(t(g), x); }

}  // namespace infomax_ext
