// CPU kernels of the paired first layer of the MI chain.
//   joint row r    : act(data_half[r % N] + latent_half[r]             + bias)
//   shuffled row r : act(data_half[r % N] + shuffled_half[perm[r]]   + bias)
// with shuffled_half = latent_half when it is absent. Output rows: M joint, then M shuffled.
// bfloat16 and float16: the sums, the activation and its derivative in float32 (opmath_t), each
// result rounded to the input dtype once.

#include <algorithm>
#include <vector>

#include "../activations.h"
#include "../kernels.h"
#include "../op_args.h"
#include "vec_loops.h"

namespace infomax_ext {
namespace {

// Rows per task of the backward pass. Fixed, so the bias-gradient partial sums (and hence the
// result) do not depend on the number of threads.
constexpr int64_t kRowsPerChunk = 32;

template <typename scalar_t>
struct BackwardPointers {
  const scalar_t* data_half;    // (N, H)
  const scalar_t* latent_half;  // (M, H)
  const scalar_t* source;       // the shuffled source (M, H), or latent_half
  const scalar_t* bias;  // (H)
  // The layer's output (2M, H) when the derivative is read from it (identity, relu); then the
  // three halves and the bias above are null.
  const scalar_t* out;
  const scalar_t* grad_out;     // (2M, H)
  const int64_t* perm;
  const int64_t* inverse_perm;
  scalar_t* grad_data_half;    // (N, H) or null
  scalar_t* grad_latent_half;  // (M, H) or null
  scalar_t* grad_source;       // (M, H) or null
};

// The loops over the H units of one row take every choice at compile time; their activation
// math runs in run_vectorised (csrc/cpu/vec_loops.h): built for AVX-512, AVX2 and the x86-64
// baseline, so that a transcendental activation (tanh, sigmoid, ...) runs 4-16 lanes wide.

// Units per block of the backward's gradient buffers (on the stack).
constexpr int64_t kUnitBlock = 256;

// The forward of latent row r: joint and shuffled outputs from the data row ar, the latent row
// br, the source row cr and the bias.
template <Activation A, typename scalar_t>
inline void forward_units(const scalar_t* __restrict__ ar, const scalar_t* __restrict__ br,
                          const scalar_t* __restrict__ cr, const scalar_t* __restrict__ bias,
                          scalar_t* __restrict__ joint, scalar_t* __restrict__ shuffled, int64_t h,
                          opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < h; ++j) {
    const op_t a = op_t(ar[j]), bj = op_t(bias[j]);
    joint[j] = scalar_t(activation_value<A>((a + op_t(br[j])) + bj, p));
    shuffled[j] = scalar_t(activation_value<A>((a + op_t(cr[j])) + bj, p));
  }
}

// g1, g2 (count entries, op_t): the gradients at the joint and shuffled pre-activations of latent
// row r, the derivative taken at the pre-activation (ar + br + bias, ar + cr + bias) or,
// kFromOutput, read from the outputs oj, os of the two rows.
template <Activation A, bool kFromOutput, typename scalar_t>
inline void pre_activation_grads(const scalar_t* __restrict__ ar, const scalar_t* __restrict__ br,
                                 const scalar_t* __restrict__ cr,
                                 const scalar_t* __restrict__ bias,
                                 const scalar_t* __restrict__ oj, const scalar_t* __restrict__ os,
                                 const scalar_t* __restrict__ g_joint,
                                 const scalar_t* __restrict__ g_shuf,
                                 opmath_t<scalar_t>* __restrict__ g1,
                                 opmath_t<scalar_t>* __restrict__ g2, int64_t count,
                                 opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < count; ++j) {
    op_t x1, x2;
    if constexpr (kFromOutput) {
      x1 = op_t(oj[j]);
      x2 = op_t(os[j]);
    } else {
      x1 = (op_t(ar[j]) + op_t(br[j])) + op_t(bias[j]);
      x2 = (op_t(ar[j]) + op_t(cr[j])) + op_t(bias[j]);
    }
    g1[j] = activation_grad<A>(op_t(g_joint[j]), x1, p);
    g2[j] = activation_grad<A>(op_t(g_shuf[j]), x2, p);
  }
}

// pre_activation_grads built wide (run_vectorised): one build per activation, kFromOutput and
// dtype, shared by every backward_units below.
template <Activation A, bool kFromOutput, typename scalar_t>
void pre_activation_grads_vectorised(const scalar_t* ar, const scalar_t* br, const scalar_t* cr,
                                     const scalar_t* bias, const scalar_t* oj, const scalar_t* os,
                                     const scalar_t* g_joint, const scalar_t* g_shuf,
                                     opmath_t<scalar_t>* g1, opmath_t<scalar_t>* g2,
                                     int64_t count, opmath_t<scalar_t> p) {
  run_vectorised<scalar_t>([&] {
    pre_activation_grads<A, kFromOutput>(ar, br, cr, bias, oj, os, g_joint, g_shuf, g1, g2, count,
                                         p);
  });
}

// The backward of latent row r, a block of kUnitBlock units at a time: g1, g2 as above, then
// their sum into the data row's gradient gar (added to it, kAccumulateA), the bias sums bsum, g1
// into the latent row's gradient gbr, g2 into the source row's gcr. Computed in op_t (float32 for
// bfloat16 and float16), rounded to scalar_t once when stored; bsum stays in op_t.
template <Activation A, bool kFromOutput, bool kAccumulateA, bool kWantA, bool kWantB, bool kWantC,
          bool kWantBias, typename scalar_t>
inline void backward_units(const scalar_t* ar, const scalar_t* br, const scalar_t* cr,
                           const scalar_t* bias, const scalar_t* oj, const scalar_t* os,
                           const scalar_t* g_joint, const scalar_t* g_shuf,
                           scalar_t* __restrict__ gar, scalar_t* __restrict__ gbr,
                           scalar_t* __restrict__ gcr, opmath_t<scalar_t>* __restrict__ bsum,
                           int64_t h, opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  alignas(64) op_t g1[kUnitBlock];
  alignas(64) op_t g2[kUnitBlock];
  for (int64_t j0 = 0; j0 < h; j0 += kUnitBlock) {
    const int64_t count = std::min(kUnitBlock, h - j0);
    auto at = [j0](const scalar_t* ptr) { return ptr ? ptr + j0 : ptr; };
    pre_activation_grads_vectorised<A, kFromOutput>(at(ar), at(br), at(cr), at(bias), at(oj),
                                                    at(os), g_joint + j0, g_shuf + j0, g1, g2,
                                                    count, p);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t j = j0 + k;
      const op_t both = g1[k] + g2[k];
      if constexpr (kWantA) {
        if constexpr (kAccumulateA) {
          gar[j] = scalar_t(op_t(gar[j]) + both);
        } else {
          gar[j] = scalar_t(both);
        }
      }
      if constexpr (kWantBias) bsum[j] += both;
      if constexpr (kWantB) gbr[j] = scalar_t(g1[k]);
      if constexpr (kWantC) gcr[j] = scalar_t(g2[k]);
    }
  }
}

// Turns the runtime flags into template arguments of backward_units (32 instantiations, 64 for
// the activations whose derivative the output gives).
template <Activation A, typename scalar_t>
inline void backward_units_dispatch(bool from_output, bool accumulate, bool want_data_half,
                                    bool want_latent_half, bool want_source, bool want_bias,
                                    const scalar_t* ar, const scalar_t* br, const scalar_t* cr,
                                    const scalar_t* bias, const scalar_t* oj, const scalar_t* os,
                                    const scalar_t* g_joint, const scalar_t* g_shuf, scalar_t* gar,
                                    scalar_t* gbr, scalar_t* gcr, opmath_t<scalar_t>* bsum,
                                    int64_t h, opmath_t<scalar_t> p) {
  auto branch = [](bool v, auto g) {
    if (v) g(std::true_type{}); else g(std::false_type{});
  };
  auto with = [&](auto f) {
    branch(accumulate, [&](auto acc) { branch(want_data_half, [&](auto wa) { branch(want_latent_half, [&](auto wb) {
      branch(want_source, [&](auto wc) { branch(want_bias, [&](auto wbias) {
        f(acc, wa, wb, wc, wbias);
      }); }); }); }); });
  };
  auto run = [&](auto from_out) {
    with([&](auto acc, auto wa, auto wb, auto wc, auto wbias) {
      backward_units<A, decltype(from_out)::value, decltype(acc)::value, decltype(wa)::value,
                     decltype(wb)::value, decltype(wc)::value, decltype(wbias)::value>(
          ar, br, cr, bias, oj, os, g_joint, g_shuf, gar, gbr, gcr, bsum, h, p);
    });
  };
  if constexpr (derivative_from_output(A)) {
    branch(from_output, run);
  } else {
    run(std::false_type{});
  }
}

// out += the gradient of a shuffled row that read this latent row: g_q through the activation at
// the row's pre-activation aq + br + bias or, kFromOutput, read from its output oq.
template <Activation A, bool kFromOutput, typename scalar_t>
inline void add_returned_units(const scalar_t* __restrict__ aq, const scalar_t* __restrict__ br,
                               const scalar_t* __restrict__ bias,
                               const scalar_t* __restrict__ oq,
                               const scalar_t* __restrict__ g_q, scalar_t* __restrict__ out,
                               int64_t h, opmath_t<scalar_t> p) {
  using op_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < h; ++j) {
    const op_t x = kFromOutput ? op_t(oq[j]) : (op_t(aq[j]) + op_t(br[j])) + op_t(bias[j]);
    out[j] = scalar_t(op_t(out[j]) + activation_grad<A>(op_t(g_q[j]), x, p));
  }
}

// Gradients of latent row r (data row i = r % N, sample block r / N).
template <Activation A, typename scalar_t>
inline void backward_row(const BackwardPointers<scalar_t>& ptr, int64_t r, int64_t i, int64_t n,
                         int64_t m, int64_t h, opmath_t<scalar_t> p, bool accumulate_a,
                         bool has_source, opmath_t<scalar_t>* bsum) {
  const int64_t src_row = ptr.perm[r];
  const bool from_output = ptr.out != nullptr;
  scalar_t* gbr = ptr.grad_latent_half ? ptr.grad_latent_half + r * h : nullptr;
  backward_units_dispatch<A>(
      from_output, accumulate_a, ptr.grad_data_half != nullptr, gbr != nullptr,
      ptr.grad_source != nullptr, bsum != nullptr,
      from_output ? nullptr : ptr.data_half + i * h, from_output ? nullptr : ptr.latent_half + r * h,
      from_output ? nullptr : ptr.source + src_row * h, ptr.bias,
      from_output ? ptr.out + r * h : nullptr, from_output ? ptr.out + (m + r) * h : nullptr,
      ptr.grad_out + r * h, ptr.grad_out + (m + r) * h,
      ptr.grad_data_half ? ptr.grad_data_half + i * h : nullptr, gbr,
      ptr.grad_source ? ptr.grad_source + src_row * h : nullptr, bsum, h, p);
  if (gbr && !has_source) {
    // Shuffled row q = inverse_perm[r] read latent row r: its gradient comes back here.
    const int64_t q = ptr.inverse_perm[r];
    if (from_output) {
      run_vectorised<scalar_t>([&] {
        add_returned_units<A, true, scalar_t>(nullptr, nullptr, nullptr, ptr.out + (m + q) * h,
                                              ptr.grad_out + (m + q) * h, gbr, h, p);
      });
    } else {
      run_vectorised<scalar_t>([&] {
        add_returned_units<A, false, scalar_t>(ptr.data_half + (q % n) * h,
                                               ptr.latent_half + r * h, ptr.bias, nullptr,
                                               ptr.grad_out + (m + q) * h, gbr, h, p);
      });
    }
  }
}

// The whole backward pass: chunks of data rows i, each handling rows i, N + i, ..., (S-1) N + i
// of the latent half, so the sum over samples into grad_data_half[i] stays inside one task; the
// bias gradient (grad_bias, or null) from per-chunk partial sums added in chunk order.
template <typename scalar_t>
void backward_pass(const BackwardPointers<scalar_t>& ptr, int64_t n, int64_t m, int64_t h,
                   Activation act, opmath_t<scalar_t> p, bool has_source, scalar_t* grad_bias) {
  using op_t = opmath_t<scalar_t>;
  using acc_t = acc_type<scalar_t, false>;
  const int64_t s = m / n;
  const int64_t n_chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<op_t> bias_partial(grad_bias ? n_chunks * h : 0, op_t(0));
  dispatch_activation(act, [&](auto tag) {
    constexpr Activation A = decltype(tag)::value;
    torch::stable::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        op_t* bsum = grad_bias ? bias_partial.data() + chunk * h : nullptr;
        const int64_t i_end = std::min(n, (chunk + 1) * kRowsPerChunk);
        for (int64_t i = chunk * kRowsPerChunk; i < i_end; ++i) {
          for (int64_t smp = 0; smp < s; ++smp) {
            backward_row<A>(ptr, smp * n + i, i, n, m, h, p, smp > 0, has_source, bsum);
          }
        }
      }
    });
  });
  if (grad_bias) {
    for (int64_t j = 0; j < h; ++j) {
      acc_t total = 0;
      for (int64_t chunk = 0; chunk < n_chunks; ++chunk) total += bias_partial[chunk * h + j];
      grad_bias[j] = static_cast<scalar_t>(total);
    }
  }
}

void check_perm_range(const int64_t* perm, int64_t m) {
  for (int64_t r = 0; r < m; ++r) {
    INFOMAX_CHECK(perm[r] >= 0 && perm[r] < m, "infomax_ext: perm entry ", r, " is ", perm[r],
                ", outside [0, ", m, ")");
  }
}

}  // namespace

Tensor paired_first_layer_cpu(const Tensor& data_half_in, const Tensor& latent_half_in,
                                  const std::optional<Tensor>& shuffled_source_in,
                                  const Tensor& bias_in, const Tensor& perm_in,
                                  std::string_view activation, double param) {
  const PairedFirstLayerArgs args(data_half_in, latent_half_in, shuffled_source_in, bias_in, perm_in,
                                  activation);
  const Tensor &data_half = args.data_half, &latent_half = args.latent_half, &source = args.source, &bias = args.bias, &perm = args.perm;
  const Activation act = args.act;
  const int64_t n = args.n, h = args.h, m = args.m;
  check_perm_range(perm.const_data_ptr<int64_t>(), m);
  Tensor out = empty_on(data_half, {2 * m, h});

  dispatch_floating_and_reduced(data_half.scalar_type(), "paired_first_layer_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using op_t = opmath_t<scalar_t>;
    const scalar_t* pa = data_half.const_data_ptr<scalar_t>();
    const scalar_t* pb = latent_half.const_data_ptr<scalar_t>();
    const scalar_t* pc = source.const_data_ptr<scalar_t>();
    const scalar_t* pbias = bias.const_data_ptr<scalar_t>();
    const int64_t* pp = perm.const_data_ptr<int64_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const op_t p = static_cast<op_t>(param);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(h, 1));
      torch::stable::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          run_vectorised<scalar_t>([&] {
            forward_units<A>(pa + (r % n) * h, pb + r * h, pc + pp[r] * h, pbias, po + r * h,
                             po + (m + r) * h, h, p);
          });
        }
      });
    });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_cpu(
    const Tensor& grad_out_in, const Tensor& data_half_in, const Tensor& latent_half_in,
    const std::optional<Tensor>& shuffled_source_in, const Tensor& bias_in,
    const Tensor& perm_in, const Tensor& inverse_perm_in, std::string_view activation,
    double param, const std::vector<bool>& output_mask) {
  const PairedFirstLayerBackwardArgs args(grad_out_in, data_half_in, latent_half_in,
                                          shuffled_source_in, bias_in, perm_in, inverse_perm_in,
                                          activation, output_mask);
  const Tensor &data_half = args.data_half, &latent_half = args.latent_half, &source = args.source, &bias = args.bias, &perm = args.perm;
  const Tensor &grad_out = args.grad_out, &inverse_perm = args.inverse_perm;
  const Activation act = args.act;
  const bool has_source = args.has_source, want_bias = args.want_bias;
  const int64_t n = args.n, h = args.h, m = args.m;
  check_perm_range(perm.const_data_ptr<int64_t>(), m);
  check_perm_range(inverse_perm.const_data_ptr<int64_t>(), m);
  if (!args.any_wanted()) return args.grads();

  dispatch_floating_and_reduced(data_half.scalar_type(), "paired_first_layer_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    BackwardPointers<scalar_t> ptr{
        data_half.const_data_ptr<scalar_t>(), latent_half.const_data_ptr<scalar_t>(), source.const_data_ptr<scalar_t>(),
        bias.const_data_ptr<scalar_t>(), nullptr, grad_out.const_data_ptr<scalar_t>(),
        perm.const_data_ptr<int64_t>(), inverse_perm.const_data_ptr<int64_t>(),
        args.want_data_half ? args.grad_data_half.mutable_data_ptr<scalar_t>() : nullptr,
        args.want_latent_half ? args.grad_latent_half.mutable_data_ptr<scalar_t>() : nullptr,
        args.want_source ? args.grad_source.mutable_data_ptr<scalar_t>() : nullptr};
    backward_pass(ptr, n, m, h, act, static_cast<opmath_t<scalar_t>>(param), has_source,
                  want_bias ? args.grad_bias.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return args.grads();
}

std::tuple<Tensor, Tensor, Tensor, Tensor> paired_first_layer_backward_from_output_cpu(
    const Tensor& grad_out_in, const Tensor& out_in, int64_t n, bool has_source,
    const Tensor& perm_in, const Tensor& inverse_perm_in, Activation act,
    const std::vector<bool>& want) {
  const PairedFromOutputBackwardArgs args(grad_out_in, out_in, n, has_source, perm_in,
                                          inverse_perm_in, want);
  check_perm_range(args.perm.const_data_ptr<int64_t>(), args.m);
  check_perm_range(args.inverse_perm.const_data_ptr<int64_t>(), args.m);
  dispatch_floating_and_reduced(args.out.scalar_type(), "paired_first_layer_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    auto write = [&](int k) { return args.want[k] ? args.grads[k].mutable_data_ptr<scalar_t>() : nullptr; };
    BackwardPointers<scalar_t> ptr{
        nullptr, nullptr, nullptr, nullptr, args.out.const_data_ptr<scalar_t>(),
        args.grad_out.const_data_ptr<scalar_t>(), args.perm.const_data_ptr<int64_t>(),
        args.inverse_perm.const_data_ptr<int64_t>(), write(0), write(1), write(2)};
    backward_pass(ptr, n, args.m, args.h, act, opmath_t<scalar_t>(0), has_source, write(3));
  });
  return args.result();
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("paired_first_layer", TORCH_BOX(&paired_first_layer_cpu));
  m.impl("paired_first_layer_backward", TORCH_BOX(&paired_first_layer_backward_cpu));
}

}  // namespace infomax_ext
