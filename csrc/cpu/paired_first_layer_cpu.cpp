// CPU kernels of the paired first layer of the MI chain.
//   joint row r    : act(data_half[r % N] + latent_half[r]             + bias)
//   shuffled row r : act(data_half[r % N] + shuffled_source[perm[r]]   + bias)
// with shuffled_source = latent_half when it is absent. Output rows: M joint, then M shuffled.

#include <algorithm>
#include <vector>

#include "../activations.h"
#include "../kernels.h"
#include "../op_args.h"

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
  const scalar_t* grad_out;     // (2M, H)
  const int64_t* perm;
  const int64_t* inverse_perm;
  scalar_t* grad_data_half;    // (N, H) or null
  scalar_t* grad_latent_half;  // (M, H) or null
  scalar_t* grad_source;       // (M, H) or null
};

// The inner loop over the H units of one row, with every choice made at compile time so that it
// vectorises. g1, g2: gradients at the joint and shuffled pre-activations of latent row r.
template <Activation A, bool kAccumulateA, bool kWantA, bool kWantB, bool kWantC, bool kWantBias,
          typename scalar_t>
inline void backward_units(const scalar_t* __restrict__ ar, const scalar_t* __restrict__ br,
                           const scalar_t* __restrict__ cr, const scalar_t* __restrict__ bias,
                           const scalar_t* __restrict__ g_joint, const scalar_t* __restrict__ g_shuf,
                           scalar_t* __restrict__ gar, scalar_t* __restrict__ gbr,
                           scalar_t* __restrict__ gcr, scalar_t* __restrict__ bsum, int64_t h,
                           scalar_t p) {
  for (int64_t j = 0; j < h; ++j) {
    const scalar_t g1 = activation_grad<A>(g_joint[j], (ar[j] + br[j]) + bias[j], p);
    const scalar_t g2 = activation_grad<A>(g_shuf[j], (ar[j] + cr[j]) + bias[j], p);
    const scalar_t both = g1 + g2;
    if constexpr (kWantA) {
      if constexpr (kAccumulateA) {
        gar[j] += both;
      } else {
        gar[j] = both;
      }
    }
    if constexpr (kWantBias) bsum[j] += both;
    if constexpr (kWantB) gbr[j] = g1;
    if constexpr (kWantC) gcr[j] = g2;
  }
}

// Turns the runtime flags into template arguments of backward_units (32 instantiations).
template <Activation A, typename scalar_t, typename... Flags>
inline void backward_units_dispatch(bool accumulate, bool want_data_half, bool want_latent_half, bool want_source,
                                    bool want_bias, const scalar_t* ar, const scalar_t* br,
                                    const scalar_t* cr, const scalar_t* bias,
                                    const scalar_t* g_joint, const scalar_t* g_shuf, scalar_t* gar,
                                    scalar_t* gbr, scalar_t* gcr, scalar_t* bsum, int64_t h,
                                    scalar_t p) {
  auto with = [&](auto f) {
    auto branch = [](bool v, auto g) {
      if (v) g(std::true_type{}); else g(std::false_type{});
    };
    branch(accumulate, [&](auto acc) { branch(want_data_half, [&](auto wa) { branch(want_latent_half, [&](auto wb) {
      branch(want_source, [&](auto wc) { branch(want_bias, [&](auto wbias) {
        f(acc, wa, wb, wc, wbias);
      }); }); }); }); });
  };
  with([&](auto acc, auto wa, auto wb, auto wc, auto wbias) {
    backward_units<A, decltype(acc)::value, decltype(wa)::value, decltype(wb)::value,
                   decltype(wc)::value, decltype(wbias)::value>(
        ar, br, cr, bias, g_joint, g_shuf, gar, gbr, gcr, bsum, h, p);
  });
}

// Gradients of latent row r (data row i = r % N, sample block r / N).
template <Activation A, typename scalar_t>
inline void backward_row(const BackwardPointers<scalar_t>& ptr, int64_t r, int64_t i, int64_t n,
                         int64_t m, int64_t h, scalar_t p, bool accumulate_a, bool has_source,
                         scalar_t* bsum) {
  const int64_t src_row = ptr.perm[r];
  scalar_t* gbr = ptr.grad_latent_half ? ptr.grad_latent_half + r * h : nullptr;
  backward_units_dispatch<A>(accumulate_a, ptr.grad_data_half != nullptr, gbr != nullptr, ptr.grad_source != nullptr,
                             bsum != nullptr, ptr.data_half + i * h, ptr.latent_half + r * h, ptr.source + src_row * h,
                             ptr.bias, ptr.grad_out + r * h, ptr.grad_out + (m + r) * h,
                             ptr.grad_data_half ? ptr.grad_data_half + i * h : nullptr, gbr,
                             ptr.grad_source ? ptr.grad_source + src_row * h : nullptr, bsum, h, p);
  if (gbr && !has_source) {
    // Shuffled row q = inverse_perm[r] read latent row r: its gradient comes back here.
    const int64_t q = ptr.inverse_perm[r];
    const scalar_t* __restrict__ aq = ptr.data_half + (q % n) * h;
    const scalar_t* __restrict__ br = ptr.latent_half + r * h;
    const scalar_t* __restrict__ g_q = ptr.grad_out + (m + q) * h;
    const scalar_t* __restrict__ bias = ptr.bias;
    scalar_t* __restrict__ out = gbr;
    for (int64_t j = 0; j < h; ++j) {
      out[j] += activation_grad<A>(g_q[j], (aq[j] + br[j]) + bias[j], p);
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

  dispatch_floating(data_half.scalar_type(), "paired_first_layer_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const scalar_t* pa = data_half.const_data_ptr<scalar_t>();
    const scalar_t* pb = latent_half.const_data_ptr<scalar_t>();
    const scalar_t* pc = source.const_data_ptr<scalar_t>();
    const scalar_t* pbias = bias.const_data_ptr<scalar_t>();
    const int64_t* pp = perm.const_data_ptr<int64_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const scalar_t p = static_cast<scalar_t>(param);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(h, 1));
      torch::stable::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* ar = pa + (r % n) * h;
          const scalar_t* br = pb + r * h;
          const scalar_t* cr = pc + pp[r] * h;
          scalar_t* joint = po + r * h;
          scalar_t* shuffled = po + (m + r) * h;
          for (int64_t j = 0; j < h; ++j) {
            joint[j] = activation_value<A>((ar[j] + br[j]) + pbias[j], p);
            shuffled[j] = activation_value<A>((ar[j] + cr[j]) + pbias[j], p);
          }
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
  const int64_t n = args.n, h = args.h, m = args.m, s = m / n;
  check_perm_range(perm.const_data_ptr<int64_t>(), m);
  check_perm_range(inverse_perm.const_data_ptr<int64_t>(), m);
  if (!args.any_wanted()) return args.grads();

  dispatch_floating(data_half.scalar_type(), "paired_first_layer_backward_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    using acc_t = acc_type<scalar_t, false>;
    BackwardPointers<scalar_t> ptr{
        data_half.const_data_ptr<scalar_t>(), latent_half.const_data_ptr<scalar_t>(), source.const_data_ptr<scalar_t>(),
        bias.const_data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(),
        perm.const_data_ptr<int64_t>(), inverse_perm.const_data_ptr<int64_t>(),
        args.want_data_half ? args.grad_data_half.mutable_data_ptr<scalar_t>() : nullptr,
        args.want_latent_half ? args.grad_latent_half.mutable_data_ptr<scalar_t>() : nullptr,
        args.want_source ? args.grad_source.mutable_data_ptr<scalar_t>() : nullptr};
    const scalar_t p = static_cast<scalar_t>(param);
    // Chunks of data rows i; each handles rows i, N + i, ..., (S-1) N + i of the latent half,
    // so the sum over samples into grad_data_half[i] stays inside one task.
    const int64_t n_chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
    std::vector<scalar_t> bias_partial(want_bias ? n_chunks * h : 0, scalar_t(0));
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      torch::stable::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
          scalar_t* bsum = want_bias ? bias_partial.data() + chunk * h : nullptr;
          const int64_t i_end = std::min(n, (chunk + 1) * kRowsPerChunk);
          for (int64_t i = chunk * kRowsPerChunk; i < i_end; ++i) {
            for (int64_t smp = 0; smp < s; ++smp) {
              backward_row<A>(ptr, smp * n + i, i, n, m, h, p, smp > 0, has_source, bsum);
            }
          }
        }
      });
    });
    if (want_bias) {
      scalar_t* gbias = args.grad_bias.mutable_data_ptr<scalar_t>();
      for (int64_t j = 0; j < h; ++j) {
        acc_t total = 0;
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk) total += bias_partial[chunk * h + j];
        gbias[j] = static_cast<scalar_t>(total);
      }
    }
  });
  return args.grads();
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("paired_first_layer", TORCH_BOX(&paired_first_layer_cpu));
  m.impl("paired_first_layer_backward", TORCH_BOX(&paired_first_layer_backward_cpu));
}

}  // namespace infomax_ext
