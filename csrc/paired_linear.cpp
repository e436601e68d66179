// paired_linear: the MI chain's whole first Linear layer on joint and shuffled pairs,
//   joint row r    : act(W [hx[r % N]; hz[r]]        + b)
//   shuffled row r : act(W [hx[r % N]; src[perm[r]]] + b),   src = hz_shuffled or hz,
// with the weight split into its data and latent columns, so hx Wx^T is computed once for both
// halves and the shuffled rows are never copied. Device-agnostic (CompositeExplicitAutograd): the
// GEMMs go through the dispatcher (MKL or oneDNN on the CPU, cuBLAS on CUDA), the paired layer to
// our kernel for the device. Every argument is checked before any work.
//
// paired_linear_forward also returns the halves the backward needs (hx Wx^T when it computed it,
// else an empty tensor; the source half, or an empty tensor), and paired_linear_backward
// computes every gradient in one call: python/infomax_ext/paired_linear_op.py wraps the pair in
// one autograd node.
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "chain_parts.h"
#include "checks.h"
#include "gemm.h"
#include "kernels.h"
#include "op_args.h"
#include "tensor.h"

namespace infomax_ext {
namespace {

// Columns [start, start + count) of a 2-D weight (or of its gradient, to write into): a view.
Tensor columns(const Tensor& weight, int64_t start, int64_t count) {
  return restrided(weight, weight.size(0), count, weight.stride(0), weight.stride(1),
                   start * weight.stride(1));
}

// Whether the (H, Dx) product written into the first columns of the CPU weight gradient
// grad_w (H, Dx + Dz) is better computed apart and copied in: where grad_w's rows lie a distance
// apart that is no multiple of 64 bytes (the cache line), MKL writes them slower than a fresh
// product's, which pays for the copy from about 2^17 elements (AVX-512 EPYC, 2 threads, N = 64:
// 1.0x at 256 x 784, 1.07x slower at 128 x 784 when warm). Above 2^18 elements the temporary
// raises the call's peak memory by more than 1 MB (the paper chain's 1000 x 784 at N = 64: 4.5
// -> 7.5 MB), so the product is written in place there (bench/fixed_cost_notes.md, "Thirteenth
// session").
bool product_apart_pays(const Tensor& grad_w, int64_t dx) {
  const int64_t elements = grad_w.size(0) * dx;
  if (!grad_w.is_cpu() || elements < (int64_t{1} << 17) || elements > (int64_t{1} << 18)) {
    return false;
  }
  const ScalarType dtype = grad_w.scalar_type();
  const int64_t bytes = dtype == ScalarType::Double ? 8 : dtype == ScalarType::Float ? 4 : 2;
  return (grad_w.stride(0) * bytes) % 64 != 0;
}

// grad @ w_latent (M, Dz) for a narrow Dz, as (w_latent^T grad^T)^T: several times faster than
// the direct product on the CPU.
Tensor narrow_input_grad(const Tensor& grad, const Tensor& w_latent) {
  return t(mm(t(w_latent), t(grad)));
}

// hx Wx^T (N, H): the data columns' product, without the bias (the paired kernel adds it).
Tensor data_product(const Tensor& hx, const Tensor& weight) {
  bool bias_added = false;
  return linear_forward(hx, columns(weight, 0, hx.size(1)), std::nullopt, &bias_added);
}

Tensor paired_first_layer_on_device(const Tensor& data_half, const Tensor& latent_half,
                                    const std::optional<Tensor>& source, const Tensor& bias,
                                    const Tensor& perm, std::string_view activation,
                                    double param) {
#ifdef USE_CUDA
  if (data_half.is_cuda()) {
    return paired_first_layer_cuda(data_half, latent_half, source, bias, perm, activation, param);
  }
#endif
  INFOMAX_CHECK(data_half.is_cpu(), "infomax_ext: paired_linear has no kernel for device ",
                device_of(data_half));
  return paired_first_layer_cpu(data_half, latent_half, source, bias, perm, activation, param);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_on_device(
    const Tensor& grad_out, const Tensor& data_half, const Tensor& latent_half,
    const std::optional<Tensor>& source, const Tensor& bias, const Tensor& perm, bool need_inverse,
    std::string_view activation, double param, const std::vector<bool>& want) {
#ifdef USE_CUDA
  if (data_half.is_cuda()) {
    const Tensor inverse = need_inverse ? inverse_permutation_cuda(perm) : perm;
    return paired_first_layer_backward_cuda(grad_out, data_half, latent_half, source, bias, perm,
                                            inverse, activation, param, want);
  }
#endif
  const Tensor inverse = need_inverse ? inverse_permutation_cpu(perm) : perm;
  return paired_first_layer_backward_cpu(grad_out, data_half, latent_half, source, bias, perm,
                                         inverse, activation, param, want);
}

// The from-output backward of the paired kernel (identity, relu): no halves read.
std::tuple<Tensor, Tensor, Tensor, Tensor> paired_backward_from_output_on_device(
    const Tensor& grad_out, const Tensor& out, int64_t n, bool has_source, const Tensor& perm,
    bool need_inverse, Activation act, const std::vector<bool>& want) {
#ifdef USE_CUDA
  if (out.is_cuda()) {
    const Tensor inverse = need_inverse ? inverse_permutation_cuda(perm) : perm;
    return paired_first_layer_backward_from_output_cuda(grad_out, out, n, has_source, perm,
                                                        inverse, act, want);
  }
#endif
  const Tensor inverse = need_inverse ? inverse_permutation_cpu(perm) : perm;
  return paired_first_layer_backward_from_output_cpu(grad_out, out, n, has_source, perm, inverse,
                                                     act, want);
}

// The bias, or zeros when the layer has none (the kernels add one).
Tensor bias_or_zeros(const std::optional<Tensor>& bias, const Tensor& weight) {
  return bias.has_value() ? *bias
                          : torch::stable::new_zeros(weight, std::vector<int64_t>{weight.size(0)});
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_linear_forward(
    const Tensor& hx, const Tensor& hz, const std::optional<Tensor>& hz_shuffled,
    const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& perm,
    std::string_view activation, double param, const std::optional<Tensor>& data_half) {
  check_paired_linear(hx, hz, hz_shuffled, weight, bias, perm, std::string(activation), data_half);
  const int64_t dx = hx.size(1);
  const Tensor w_latent_t = t(columns(weight, dx, hz.size(1)));
  const Tensor data = data_half.has_value() ? *data_half : data_product(hx, weight);
  // The two narrow products side by side (mm_pair) where the shuffled codes have their own.
  Tensor latent;
  std::optional<Tensor> source;
  if (hz_shuffled.has_value()) {
    std::tie(latent, source) = mm_pair(hz, w_latent_t, *hz_shuffled, w_latent_t);
  } else {
    latent = mm(hz, w_latent_t);
  }
  const Tensor out = paired_first_layer_on_device(data, latent, source, bias_or_zeros(bias, weight),
                                                  perm, activation, param);
  // Absent outputs are empty tensors, each its own (outputs must not alias).
  return {out, data_half.has_value() ? empty_on(weight, {0}) : data, latent,
          source.has_value() ? *source : empty_on(weight, {0})};
}

Tensor paired_linear(const Tensor& hx, const Tensor& hz, const std::optional<Tensor>& hz_shuffled,
                     const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& perm,
                     std::string_view activation, double param,
                     const std::optional<Tensor>& data_half) {
  return std::get<0>(
      paired_linear_forward(hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half));
}

// Gradients of paired_linear for output_mask = (hx, hz, hz_shuffled, weight, bias); data_half,
// latent_half and shuffled_half (present with hz_shuffled) are the halves of the forward. With out
// (the forward's output (2M, H); identity and relu only) the derivative is read from it and the
// halves are not read: the autograd node keeps the output instead of the three halves.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> paired_linear_backward(
    const Tensor& grad_out, const Tensor& hx, const Tensor& hz,
    const std::optional<Tensor>& hz_shuffled, const Tensor& weight, const Tensor& data_half,
    const Tensor& latent_half, const std::optional<Tensor>& shuffled_half,
    const std::optional<Tensor>& bias, const Tensor& perm, std::string_view activation, double param,
    const std::vector<bool>& output_mask, const std::optional<Tensor>& out) {
  const bool from_output = out.has_value();
  const Activation act = checked_activation(std::string(activation));
  if (from_output) {
    check_paired_linear(hx, hz, hz_shuffled, weight, bias, perm, std::string(activation),
                        std::nullopt);
    INFOMAX_CHECK(derivative_from_output(act),
                  "infomax_ext: paired_linear_backward reads the derivative from out for identity "
                  "and relu only, got '", activation, "'");
    const int64_t rows = 2 * hz.size(0), units = weight.size(0);
    for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{*out, "out"},
                                  std::pair<const Tensor&, const char*>{grad_out, "grad_out"}}) {
      check_float_tensor(t, name, 2);
      check_same(hx, t, "hx", name);
      INFOMAX_CHECK(t.size(0) == rows && t.size(1) == units, "infomax_ext: ", name,
                    " has shape ", shape_of(t), ", expected [", rows, ", ", units, "]");
    }
  } else {
    check_paired_linear(hx, hz, hz_shuffled, weight, bias, perm, std::string(activation),
                        data_half);
    INFOMAX_CHECK(hz_shuffled.has_value() == shuffled_half.has_value(),
                  "infomax_ext: shuffled_half must be given exactly when hz_shuffled is");
    check_same(hx, latent_half, "hx", "latent_half");
    INFOMAX_CHECK(latent_half.dim() == 2 && latent_half.size(0) == hz.size(0) &&
                      latent_half.size(1) == weight.size(0),
                  "infomax_ext: latent_half has shape ", shape_of(latent_half), ", expected [",
                  hz.size(0), ", ", weight.size(0), "]");
  }
  const std::vector<bool> mask = checked_mask(output_mask, 5);
  const bool has_source = hz_shuffled.has_value();
  const bool need_hx = mask[0], need_hz = mask[1];
  const bool need_source = mask[2] && has_source, need_w = mask[3];
  const bool need_bias = mask[4];
  const std::vector<bool> want = {need_hx || need_w, need_hz || need_w,
                                  has_source && (need_source || need_w), need_bias};
  // A gradient not asked for is an empty tensor, each its own (outputs must not alias).
  auto none = [&] { return empty_on(hx, {0}); };
  if (!(want[0] || want[1] || want[2] || want[3])) return {none(), none(), none(), none(), none()};

  // The inverse is read when the shuffled rows' gradient returns to latent_half; computing it
  // also checks that perm is a permutation, which the source gradient (written, not summed, at
  // perm[r]) needs too.
  const bool need_inverse = (want[1] && !has_source) || want[2];
  auto [g_data, g_latent, g_source, g_bias] =
      from_output
          ? paired_backward_from_output_on_device(grad_out, *out, hx.size(0), has_source, perm,
                                                  need_inverse, act, want)
          : paired_first_layer_backward_on_device(grad_out, data_half, latent_half, shuffled_half,
                                                  bias_or_zeros(bias, weight), perm, need_inverse,
                                                  activation, param, want);

  // The narrow (latent) side first, so that its two (M, H) gradients are freed before the weight
  // gradient's buffer is allocated: this backward holds the call's peak memory.
  const int64_t dx = hx.size(1), dz = hz.size(1);
  const Tensor w_data = columns(weight, 0, dx), w_latent = columns(weight, dx, dz);
  // Each side's input gradient g W_latent (as (W_latent^T g^T)^T) and weight-gradient term
  // hz^T g ((hz^T g)^T runs several times faster than g^T hz for the narrow side), the two of
  // a side side by side (mm_pair) where both are needed.
  auto narrow_side = [&](const Tensor& g, const Tensor& codes, bool need_input) {
    if (need_input && need_w) {
      auto [grad_codes_t, term] = mm_pair(t(w_latent), t(g), t(codes), g);
      return std::make_pair(t(grad_codes_t), term);
    }
    return std::make_pair(need_input ? narrow_input_grad(g, w_latent) : none(),
                          need_w ? mm(t(codes), g) : Tensor());
  };
  // latent_t (Dz, H): the latent columns' weight gradient, transposed.
  auto [grad_hz, latent_t] = narrow_side(g_latent, hz, need_hz);
  Tensor grad_source = none();
  if (has_source) {
    Tensor source_term;
    std::tie(grad_source, source_term) = narrow_side(g_source, *hz_shuffled, need_source);
    if (need_w) latent_t = torch::stable::subtract(latent_t, source_term, -1.0);
  }
  g_latent = Tensor();
  g_source = Tensor();
  Tensor grad_w = none(), grad_hx = none();
  auto hx_grad = [&] { grad_hx = linear_input_grad(g_data, w_data); };
  if (need_w) {
    // One buffer, each half written in place: no zero fill, slice copies or adds.
    grad_w = empty_like_shape(weight);
    Tensor data_part = columns(grad_w, 0, dx), latent_part = columns(grad_w, dx, dz);
    torch::stable::copy_(latent_part, t(latent_t));
    // g^T hx written straight into the strided slice (the BLAS takes the row stride), or where
    // that is slower and the temporary small (product_apart_pays: the Julia chain, 256 x 784 in
    // a (256, 794) gradient) a fresh (H, Dx) product copied in.
    // hx's gradient, independent of it, at the same time where that is faster.
    auto data_columns_grad = [&] {
      if (product_apart_pays(grad_w, dx)) {
        torch::stable::copy_(data_part, mm(t(g_data), hx));
      } else {
        mm_out(data_part, t(g_data), hx);
      }
    };
    if (need_hx) {
      side_by_side(hx, data_columns_grad, hx_grad);
    } else {
      data_columns_grad();
    }
  } else if (need_hx) {
    hx_grad();
  }
  return {grad_hx, grad_hz, grad_source, grad_w, need_bias ? g_bias : none()};
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CompositeExplicitAutograd, m) {
  m.impl("paired_linear", TORCH_BOX(&paired_linear));
  m.impl("paired_linear_forward", TORCH_BOX(&paired_linear_forward));
  m.impl("paired_linear_backward", TORCH_BOX(&paired_linear_backward));
}

}  // namespace infomax_ext
