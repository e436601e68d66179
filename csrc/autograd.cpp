// Autograd formulas of the ops (registered at the Autograd key, so neither the forward nor the
// backward passes through Python), and paired_linear: the MI chain's whole first Linear layer on
// joint and shuffled pairs as one op and one autograd node. Device-agnostic: everything here calls
// ATen or the infomax_ext ops through the dispatcher, which picks the CPU or CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>

#include "checks.h"

namespace infomax_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---------------------------------------------------------------------------- dispatcher calls

at::Tensor paired_first_layer_op(const at::Tensor& data_half, const at::Tensor& latent_half,
                                 const at::Tensor& shuffled_source, const at::Tensor& bias,
                                 const at::Tensor& perm, c10::string_view activation,
                                 double param) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("infomax_ext::paired_first_layer", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, const at::Tensor&,
                                         const at::Tensor&, c10::string_view, double)>();
  return op.call(data_half, latent_half,
                 shuffled_source.defined() ? std::optional<at::Tensor>(shuffled_source) : std::nullopt,
                 bias, perm, activation, param);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> paired_first_layer_backward_op(
    const at::Tensor& grad_out, const at::Tensor& data_half, const at::Tensor& latent_half,
    const at::Tensor& shuffled_source, const at::Tensor& bias, const at::Tensor& perm,
    c10::string_view activation, double param, std::array<bool, 4> want) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("infomax_ext::paired_first_layer_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, c10::string_view, double, std::array<bool, 4>)>();
  static auto inverse_op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("infomax_ext::inverse_permutation", "")
                               .typed<at::Tensor(const at::Tensor&)>();
  const bool has_source = shuffled_source.defined();
  // The inverse is only read when the shuffled rows' gradient returns to latent_half.
  const at::Tensor inverse = (want[1] && !has_source) ? inverse_op.call(perm) : perm;
  return op.call(grad_out, data_half, latent_half,
                 has_source ? std::optional<at::Tensor>(shuffled_source) : std::nullopt, bias, perm,
                 inverse, activation, param, want);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nwj_head_op(const at::Tensor& hidden,
                                                           const at::Tensor& weight,
                                                           const at::Tensor& bias, int64_t n_joint,
                                                           c10::string_view activation, double param) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("infomax_ext::nwj_head", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           int64_t, c10::string_view, double)>();
  return op.call(hidden, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
                 n_joint, activation, param);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nwj_head_backward_op(
    const at::Tensor& grad_bound, const at::Tensor& grad_scores, const at::Tensor& hidden,
    const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& pre, int64_t n_joint,
    c10::string_view activation, double param, std::array<bool, 3> want) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("infomax_ext::nwj_head_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           c10::string_view, double, std::array<bool, 3>)>();
  return op.call(grad_bound,
                 grad_scores.defined() ? std::optional<at::Tensor>(grad_scores) : std::nullopt,
                 hidden, weight, scores, pre, n_joint, activation, param, want);
}

at::Tensor nwj_bound_op(const at::Tensor& t_joint, const at::Tensor& t_marg) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("infomax_ext::nwj_bound", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(t_joint, t_marg);
}

std::tuple<at::Tensor, at::Tensor> nwj_bound_backward_op(const at::Tensor& grad,
                                                         const at::Tensor& t_joint,
                                                         const at::Tensor& t_marg) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("infomax_ext::nwj_bound_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&)>();
  return op.call(grad, t_joint, t_marg);
}

at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

at::Tensor grad_if(bool wanted, const at::Tensor& grad) { return wanted ? grad : at::Tensor(); }

// The backward ops have no derivatives of their own: a graph of the backward
// (create_graph=True) would give wrong second derivatives silently, so refuse it.
void refuse_double_backward(const variable_list& grads, const variable_list& saved,
                            const char* op) {
  if (!at::GradMode::is_enabled()) return;
  auto needs = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  const bool any = std::any_of(grads.begin(), grads.end(), needs) ||
                   std::any_of(saved.begin(), saved.end(), needs);
  TORCH_CHECK(!any, "infomax_ext: ", op, " does not support double backward (a gradient of its "
              "gradient, create_graph=True); compute higher derivatives on the plain-PyTorch "
              "path: inside `with infomax_ext.use_reference_path():`");
}

// Walks ctx->needs_input_grad, whose slots are the tensor inputs actually given: an absent
// optional tensor has none (while backward still returns one entry per forward argument).
class InputSlots {
 public:
  explicit InputSlots(AutogradContext* ctx) : ctx_(ctx) {}
  bool next() { return ctx_->needs_input_grad(index_++); }
  bool next_if(bool present) { return present && next(); }

 private:
  AutogradContext* ctx_;
  size_t index_ = 0;
};

// ------------------------------------------------------------------------- paired_first_layer

struct PairedFirstLayerFunction : public torch::autograd::Function<PairedFirstLayerFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& data_half,
                            const at::Tensor& latent_half,
                            const std::optional<at::Tensor>& shuffled_source,
                            const at::Tensor& bias, const at::Tensor& perm,
                            const std::string& activation, double param) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor source = value_or_undefined(shuffled_source);
    at::Tensor out =
        paired_first_layer_op(data_half, latent_half, source, bias, perm, activation, param);
    ctx->save_for_backward({data_half, latent_half, source, bias, perm});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["param"] = param;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    refuse_double_backward(grads, saved, "paired_first_layer");
    const at::Tensor &source = saved[2];
    // needs_input_grad counts the tensor inputs that are present: an absent source has no slot.
    InputSlots slot(ctx);
    std::array<bool, 4> want;
    want[0] = slot.next();
    want[1] = slot.next();
    want[2] = slot.next_if(source.defined());
    want[3] = slot.next();
    if (!(want[0] || want[1] || want[2] || want[3])) return variable_list(7);
    auto [g_data, g_latent, g_source, g_bias] = paired_first_layer_backward_op(
        grads[0], saved[0], saved[1], source, saved[3], saved[4],
        ctx->saved_data["activation"].toStringRef(), ctx->saved_data["param"].toDouble(), want);
    return {grad_if(want[0], g_data), grad_if(want[1], g_latent), grad_if(want[2], g_source),
            grad_if(want[3], g_bias), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor paired_first_layer_autograd(const at::Tensor& data_half, const at::Tensor& latent_half,
                                       const std::optional<at::Tensor>& shuffled_source,
                                       const at::Tensor& bias, const at::Tensor& perm,
                                       c10::string_view activation, double param) {
  return PairedFirstLayerFunction::apply(data_half, latent_half, shuffled_source, bias, perm,
                                         std::string(activation), param);
}

// ------------------------------------------------------------------------------ paired_linear

// From this many data rows on, the data-half weight gradient runs faster as (hx^T g)^T plus a
// transposed copy than as g^T hx written into the strided slice (measured on the CPU: 4% of the
// whole MI loss at N = 1024 on the paper chain; no gain at N <= 256).
constexpr int64_t kTransposedWeightGradRows = 512;

void check_paired_linear(const at::Tensor& hx, const at::Tensor& hz, const at::Tensor& source,
                         const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& data_half) {
  check_float_tensor(hx, "hx", 2);
  check_float_tensor(hz, "hz", 2);
  check_float_tensor(weight, "weight", 2);
  check_same(hx, hz, "hx", "hz");
  check_same(hx, weight, "hx", "weight");
  TORCH_CHECK(weight.size(1) == hx.size(1) + hz.size(1), "infomax_ext: the first layer's weight takes ",
              weight.size(1), " features but hx has ", hx.size(1), " and hz has ", hz.size(1));
  if (source.defined()) {
    check_float_tensor(source, "hz_source", 2);
    check_same(hx, source, "hx", "hz_source");
    TORCH_CHECK(source.sizes() == hz.sizes(), "infomax_ext: hz_source has shape ", source.sizes(),
                " but hz has shape ", hz.sizes());
  }
  if (bias.defined()) {
    check_float_tensor(bias, "bias", 1);
    check_same(hx, bias, "hx", "bias");
    TORCH_CHECK(bias.size(0) == weight.size(0), "infomax_ext: bias has ", bias.size(0),
                " entries but the layer has ", weight.size(0), " units");
  }
  if (data_half.defined()) {
    check_float_tensor(data_half, "data_half", 2);
    check_same(hx, data_half, "hx", "data_half");
    TORCH_CHECK(data_half.size(0) == hx.size(0) && data_half.size(1) == weight.size(0),
                "infomax_ext: data_half has shape ", data_half.sizes(), ", expected [", hx.size(0),
                ", ", weight.size(0), "] (hx @ weight[:, :Dx].T)");
    TORCH_CHECK(!data_half.requires_grad(), "infomax_ext: data_half is a precomputed constant "
                "(hx @ weight[:, :Dx].T); it must not require grad");
  }
}

// The weight split into its data and latent columns, applied: hx Wx^T (N, H) unless given as
// data_half, hz Wz^T (M, H), hz_source Wz^T (M, H) or undefined, and the bias (zeros when absent).
struct LinearHalves {
  at::Tensor data, latent, source, bias;
};

LinearHalves linear_halves(const at::Tensor& hx, const at::Tensor& hz, const at::Tensor& source,
                           const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& data_half) {
  check_paired_linear(hx, hz, source, weight, bias, data_half);
  const int64_t dx = hx.size(1);
  const at::Tensor w_latent = weight.narrow(1, dx, hz.size(1));
  LinearHalves halves;
  halves.data = data_half.defined() ? data_half : at::mm(hx, weight.narrow(1, 0, dx).t());
  halves.latent = at::mm(hz, w_latent.t());
  if (source.defined()) halves.source = at::mm(source, w_latent.t());
  halves.bias = bias.defined() ? bias : at::zeros({weight.size(0)}, weight.options());
  return halves;
}

// grad @ w_latent (M, Dz) for a narrow Dz, computed as (w_latent^T grad^T)^T: several times
// faster than the direct product on the CPU.
at::Tensor narrow_input_grad(const at::Tensor& grad, const at::Tensor& w_latent) {
  return at::mm(w_latent.t(), grad.t()).t();
}

struct PairedLinearFunction : public torch::autograd::Function<PairedLinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hx, const at::Tensor& hz,
                            const std::optional<at::Tensor>& hz_source, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias_in, const at::Tensor& perm,
                            const std::string& activation, double param,
                            const std::optional<at::Tensor>& data_half) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor source = value_or_undefined(hz_source), bias = value_or_undefined(bias_in);
    const LinearHalves halves =
        linear_halves(hx, hz, source, weight, bias, value_or_undefined(data_half));
    at::Tensor out = paired_first_layer_op(halves.data, halves.latent, halves.source, halves.bias,
                                           perm, activation, param);
    ctx->save_for_backward({hx, hz, source, weight, halves.bias, perm, halves.data, halves.latent,
                            halves.source});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["param"] = param;
    ctx->saved_data["has_bias"] = bias.defined();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    refuse_double_backward(grads, saved, "paired_linear");
    const at::Tensor &hx = saved[0], &hz = saved[1], &source = saved[2], &weight = saved[3];
    const bool has_source = source.defined();
    InputSlots slot(ctx);
    const bool need_hx = slot.next(), need_hz = slot.next();
    const bool need_src = slot.next_if(has_source), need_w = slot.next();
    const bool need_bias = slot.next_if(ctx->saved_data["has_bias"].toBool());
    const std::array<bool, 4> want = {need_hx || need_w, need_hz || need_w,
                                      has_source && (need_src || need_w), need_bias};
    if (!(want[0] || want[1] || want[2] || want[3])) return variable_list(9);
    auto [g_data, g_latent, g_source, g_bias] = paired_first_layer_backward_op(
        grads[0], saved[6], saved[7], saved[8], saved[4], saved[5],
        ctx->saved_data["activation"].toStringRef(), ctx->saved_data["param"].toDouble(), want);

    const int64_t dx = hx.size(1), dz = hz.size(1);
    const at::Tensor w_data = weight.narrow(1, 0, dx), w_latent = weight.narrow(1, dx, dz);
    at::Tensor grad_w;
    if (need_w) {
      // The latent side is narrow (Dz columns): (hz^T g)^T runs several times faster than g^T hz.
      at::Tensor latent_part = at::mm(hz.t(), g_latent);
      if (has_source) latent_part.addmm_(source.t(), g_source);
      if (at::isTensorSubclassLike(hx) || at::isTensorSubclassLike(g_data)) {
        // Traced (torch.compile, fake or functional tensors): no writes into views.
        grad_w = at::cat({at::mm(g_data.t(), hx), latent_part.t()}, 1);
      } else {
        // One buffer, each half written in place: no zero fill, slice copies or adds.
        grad_w = at::empty(weight.sizes(), weight.options());
        if (hx.size(0) >= kTransposedWeightGradRows) {
          grad_w.narrow(1, 0, dx).copy_(at::mm(hx.t(), g_data).t());
        } else {
          at::Tensor data_part = grad_w.narrow(1, 0, dx);
          at::mm_out(data_part, g_data.t(), hx);
        }
        grad_w.narrow(1, dx, dz).copy_(latent_part.t());
      }
    }
    return {need_hx ? at::mm(g_data, w_data) : at::Tensor(),
            need_hz ? narrow_input_grad(g_latent, w_latent) : at::Tensor(),
            need_src ? narrow_input_grad(g_source, w_latent) : at::Tensor(),
            grad_w,
            grad_if(need_bias, g_bias),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor paired_linear(const at::Tensor& hx, const at::Tensor& hz,
                         const std::optional<at::Tensor>& hz_source, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, const at::Tensor& perm,
                         c10::string_view activation, double param,
                         const std::optional<at::Tensor>& data_half) {
  const LinearHalves halves = linear_halves(hx, hz, value_or_undefined(hz_source), weight,
                                            value_or_undefined(bias), value_or_undefined(data_half));
  return paired_first_layer_op(halves.data, halves.latent, halves.source, halves.bias, perm,
                               activation, param);
}

at::Tensor paired_linear_autograd(const at::Tensor& hx, const at::Tensor& hz,
                                  const std::optional<at::Tensor>& hz_source,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const at::Tensor& perm, c10::string_view activation,
                                  double param, const std::optional<at::Tensor>& data_half) {
  return PairedLinearFunction::apply(hx, hz, hz_source, weight, bias, perm,
                                     std::string(activation), param, data_half);
}

// ----------------------------------------------------------------------------------- nwj_head

struct NwjHeadFunction : public torch::autograd::Function<NwjHeadFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias_in,
                               int64_t n_joint, const std::string& activation, double param) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor bias = value_or_undefined(bias_in);
    auto [bound, scores, pre] = nwj_head_op(hidden, weight, bias, n_joint, activation, param);
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({pre});
    ctx->save_for_backward({hidden, weight, scores, pre});
    ctx->saved_data["n_joint"] = n_joint;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["param"] = param;
    ctx->saved_data["has_bias"] = bias.defined();
    return {bound, scores, pre};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    refuse_double_backward(grads, saved, "nwj_head");
    InputSlots slot(ctx);
    std::array<bool, 3> want;
    want[0] = slot.next();
    want[1] = slot.next();
    want[2] = slot.next_if(ctx->saved_data["has_bias"].toBool());
    if (!(want[0] || want[1] || want[2]) || (!grads[0].defined() && !grads[1].defined())) {
      return variable_list(6);
    }
    const at::Tensor grad_bound = grads[0].defined() ? grads[0] : at::zeros({}, saved[0].options());
    auto [g_hidden, g_weight, g_bias] = nwj_head_backward_op(
        grad_bound, grads[1], saved[0], saved[1], saved[2], saved[3],
        ctx->saved_data["n_joint"].toInt(), ctx->saved_data["activation"].toStringRef(),
        ctx->saved_data["param"].toDouble(), want);
    return {grad_if(want[0], g_hidden), grad_if(want[1], g_weight), grad_if(want[2], g_bias),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> nwj_head_autograd(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    int64_t n_joint, c10::string_view activation, double param) {
  auto out = NwjHeadFunction::apply(hidden, weight, bias, n_joint, std::string(activation), param);
  return {out[0], out[1], out[2]};
}

// ---------------------------------------------------------------------------------- nwj_bound

struct NwjBoundFunction : public torch::autograd::Function<NwjBoundFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& t_joint,
                            const at::Tensor& t_marg) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({t_joint, t_marg});
    return nwj_bound_op(t_joint, t_marg);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    refuse_double_backward(grads, saved, "nwj_bound");
    auto [g_joint, g_marg] = nwj_bound_backward_op(grads[0], saved[0], saved[1]);
    return {grad_if(ctx->needs_input_grad(0), g_joint), grad_if(ctx->needs_input_grad(1), g_marg)};
  }
};

at::Tensor nwj_bound_autograd(const at::Tensor& t_joint, const at::Tensor& t_marg) {
  return NwjBoundFunction::apply(t_joint, t_marg);
}

}  // namespace

TORCH_LIBRARY_IMPL(infomax_ext, CompositeExplicitAutograd, m) {
  m.impl("paired_linear", &paired_linear);
}

TORCH_LIBRARY_IMPL(infomax_ext, Autograd, m) {
  m.impl("paired_first_layer", &paired_first_layer_autograd);
  m.impl("paired_linear", &paired_linear_autograd);
  m.impl("nwj_head", &nwj_head_autograd);
  m.impl("nwj_bound", &nwj_bound_autograd);
}

}  // namespace infomax_ext
