// CPU kernels of the paired first layer of the MI chain.
//   joint row r    : act(data_half[r % N] + latent_half[r]             + bias)
//   shuffled row r : act(data_half[r % N] + shuffled_source[perm[r]]   + bias)
// with shuffled_source = latent_half when it is absent. Output rows: M joint, then M shuffled.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/AccumulateType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../activations.h"
#include "../checks.h"

namespace infomax_ext {
namespace {

// Rows per task of the backward pass. Fixed, so the bias-gradient partial sums (and hence the
// result) do not depend on the number of threads.
constexpr int64_t kRowsPerChunk = 32;

void check_perm_range(const int64_t* perm, int64_t m) {
  for (int64_t r = 0; r < m; ++r) {
    TORCH_CHECK(perm[r] >= 0 && perm[r] < m, "infomax_ext: perm entry ", r, " is ", perm[r],
                ", outside [0, ", m, ")");
  }
}

at::Tensor paired_first_layer_cpu(const at::Tensor& data_half_in, const at::Tensor& latent_half_in,
                                  const std::optional<at::Tensor>& shuffled_source_in,
                                  const at::Tensor& bias_in, const at::Tensor& perm_in,
                                  c10::string_view activation, double param) {
  check_paired_first_layer(data_half_in, latent_half_in, shuffled_source_in, bias_in, perm_in);
  const Activation act = checked_activation(std::string(activation));
  const at::Tensor a = data_half_in.contiguous(), b = latent_half_in.contiguous();
  const bool has_source = shuffled_source_in.has_value() && shuffled_source_in->defined();
  const at::Tensor c = has_source ? shuffled_source_in->contiguous() : b;
  const at::Tensor bias = bias_in.contiguous(), perm = perm_in.contiguous();
  const int64_t n = a.size(0), h = a.size(1), m = b.size(0);
  check_perm_range(perm.const_data_ptr<int64_t>(), m);
  at::Tensor out = at::empty({2 * m, h}, a.options());

  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "paired_first_layer_cpu", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    const scalar_t* pc = c.const_data_ptr<scalar_t>();
    const scalar_t* pbias = bias.const_data_ptr<scalar_t>();
    const int64_t* pp = perm.const_data_ptr<int64_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const scalar_t p = static_cast<scalar_t>(param);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(h, 1));
      at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> paired_first_layer_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& data_half_in, const at::Tensor& latent_half_in,
    const std::optional<at::Tensor>& shuffled_source_in, const at::Tensor& bias_in,
    const at::Tensor& perm_in, const at::Tensor& inverse_perm_in, c10::string_view activation,
    double param, std::array<bool, 4> output_mask) {
  check_paired_first_layer(data_half_in, latent_half_in, shuffled_source_in, bias_in, perm_in);
  const Activation act = checked_activation(std::string(activation));
  const at::Tensor a = data_half_in.contiguous(), b = latent_half_in.contiguous();
  const bool has_source = shuffled_source_in.has_value() && shuffled_source_in->defined();
  const at::Tensor c = has_source ? shuffled_source_in->contiguous() : b;
  const at::Tensor bias = bias_in.contiguous(), perm = perm_in.contiguous();
  const int64_t n = a.size(0), h = a.size(1), m = b.size(0), s = m / n;
  check_float_tensor(grad_out_in, "grad_out", 2);
  check_same(a, grad_out_in, "data_half", "grad_out");
  TORCH_CHECK(grad_out_in.size(0) == 2 * m && grad_out_in.size(1) == h, "infomax_ext: grad_out has shape ",
              grad_out_in.sizes(), ", expected [", 2 * m, ", ", h, "]");
  check_index_vector(inverse_perm_in, a, "inverse_perm", m);
  const at::Tensor go = grad_out_in.contiguous(), inv = inverse_perm_in.contiguous();
  check_perm_range(perm.const_data_ptr<int64_t>(), m);
  check_perm_range(inv.const_data_ptr<int64_t>(), m);
  const bool want_a = output_mask[0], want_b = output_mask[1];
  const bool want_c = output_mask[2] && has_source, want_bias = output_mask[3];

  at::Tensor grad_a = want_a ? at::empty({n, h}, a.options()) : at::empty({0}, a.options());
  at::Tensor grad_b = want_b ? at::empty({m, h}, a.options()) : at::empty({0}, a.options());
  at::Tensor grad_c = want_c ? at::empty({m, h}, a.options()) : at::empty({0}, a.options());
  at::Tensor grad_bias = want_bias ? at::empty({h}, a.options()) : at::empty({0}, a.options());
  if (!(want_a || want_b || want_c || want_bias)) return {grad_a, grad_b, grad_c, grad_bias};

  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "paired_first_layer_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    const scalar_t* pc = c.const_data_ptr<scalar_t>();
    const scalar_t* pbias = bias.const_data_ptr<scalar_t>();
    const scalar_t* pg = go.const_data_ptr<scalar_t>();
    const int64_t* pp = perm.const_data_ptr<int64_t>();
    const int64_t* pinv = inv.const_data_ptr<int64_t>();
    scalar_t* ga = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = want_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gc = want_c ? grad_c.mutable_data_ptr<scalar_t>() : nullptr;
    const scalar_t p = static_cast<scalar_t>(param);
    // Chunks of data rows i; each handles rows i, N + i, ..., (S-1) N + i of the latent half,
    // so the sum over samples into grad_a[i] stays inside one task.
    const int64_t n_chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
    std::vector<acc_t> bias_partial(want_bias ? n_chunks * h : 0, acc_t(0));
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      at::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        std::vector<acc_t> row_sum(h);
        for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
          acc_t* bsum = want_bias ? bias_partial.data() + chunk * h : nullptr;
          const int64_t i_end = std::min(n, (chunk + 1) * kRowsPerChunk);
          for (int64_t i = chunk * kRowsPerChunk; i < i_end; ++i) {
            const scalar_t* ai = pa + i * h;
            std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
            for (int64_t smp = 0; smp < s; ++smp) {
              const int64_t r = smp * n + i;
              const scalar_t* br = pb + r * h;
              const scalar_t* cr = pc + pp[r] * h;
              const scalar_t* g_joint = pg + r * h;
              const scalar_t* g_shuf = pg + (m + r) * h;
              scalar_t* gbr = gb ? gb + r * h : nullptr;
              scalar_t* gcr = gc ? gc + pp[r] * h : nullptr;
              for (int64_t j = 0; j < h; ++j) {
                const scalar_t g1 =
                    g_joint[j] * activation_derivative<A>((ai[j] + br[j]) + pbias[j], p);
                const scalar_t g2 =
                    g_shuf[j] * activation_derivative<A>((ai[j] + cr[j]) + pbias[j], p);
                row_sum[j] += acc_t(g1) + acc_t(g2);
                if (gcr) gcr[j] = g2;
                if (gbr) gbr[j] = g1;
              }
              if (gbr && !has_source) {
                // Shuffled row q = inv[r] read latent row r: its gradient comes back here.
                const int64_t q = pinv[r];
                const scalar_t* aq = pa + (q % n) * h;
                const scalar_t* g_q = pg + (m + q) * h;
                for (int64_t j = 0; j < h; ++j) {
                  gbr[j] += g_q[j] * activation_derivative<A>((aq[j] + br[j]) + pbias[j], p);
                }
              }
            }
            if (ga) {
              scalar_t* gai = ga + i * h;
              for (int64_t j = 0; j < h; ++j) gai[j] = static_cast<scalar_t>(row_sum[j]);
            }
            if (bsum) {
              for (int64_t j = 0; j < h; ++j) bsum[j] += row_sum[j];
            }
          }
        }
      });
    });
    if (want_bias) {
      scalar_t* gbias = grad_bias.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, h, 256, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          acc_t total = 0;
          for (int64_t chunk = 0; chunk < n_chunks; ++chunk) total += bias_partial[chunk * h + j];
          gbias[j] = static_cast<scalar_t>(total);
        }
      });
    }
  });
  return {grad_a, grad_b, grad_c, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("paired_first_layer", &paired_first_layer_cpu);
  m.impl("paired_first_layer_backward", &paired_first_layer_backward_cpu);
}

}  // namespace infomax_ext
