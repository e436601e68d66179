// CPU kernels of the products with a narrow side: the latent columns of the MI chain's first
// Linear layer, W_z (H, K) for K = Dz latent features (10 in the chains of the bench), against
// M rows of codes. The three products of a Linear layer:
//   forward       x W_z^T     (M, K) x (K, H) -> (M, H)
//   input grad    g W_z       (M, H) x (H, K) -> (M, K)
//   weight grad   x^T g       (K, M) x (M, H) -> written as its transpose (H, K)
// With K this small, MKL spends more on its fixed cost and packing than on the FLOPs (a
// (64, 10) x (10, 256) product takes 7-12 us; the six of a call at M = 256, H = 1000 take
// 0.65-0.9 ms with 2 threads on the AVX-512 EPYC of bench/README.md): these loops keep W_z^T
// (K, H) in a small buffer and run K fused passes over rows of H entries, vectorised for the
// widest unit the CPU has (INFOMAX_TARGET_CLONES). Sums run in a fixed order (over k, over j in
// lanes, over rows), each output entry owned by one task: the same bits at any thread count.
// float32 and float64 (narrow_products_serve); csrc/paired_linear.cpp calls MKL or cuBLAS for
// everything else.
#include <algorithm>
#include <vector>

#include "../kernels.h"
#include "vec_loops.h"

namespace infomax_ext {
namespace {

// Entries of work per task of parallel_for, as ATen's GRAIN_SIZE.
constexpr int64_t kGrainWork = 32768;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(work_per_item, 1));
}

// W_z^T as a contiguous (K, H) buffer: wt[k * h + j] = w[j, k], w read through its strides.
template <typename scalar_t>
std::vector<scalar_t> transposed(const Tensor& w) {
  const int64_t h = w.size(0), k = w.size(1), s0 = w.stride(0), s1 = w.stride(1);
  const scalar_t* pw = w.const_data_ptr<scalar_t>();
  std::vector<scalar_t> wt(static_cast<size_t>(h * k));
  for (int64_t j = 0; j < h; ++j) {
    for (int64_t c = 0; c < k; ++c) wt[c * h + j] = pw[j * s0 + c * s1];
  }
  return wt;
}

// out[j] = sum_c x[c] wt[c, j] for j < h: K passes over out (in L1), vectorised over j.
template <typename scalar_t>
INFOMAX_TARGET_CLONES void row_times_wt(const scalar_t* __restrict__ x,
                                        const scalar_t* __restrict__ wt, int64_t k, int64_t h,
                                        scalar_t* __restrict__ out) {
  const scalar_t x0 = x[0];
  for (int64_t j = 0; j < h; ++j) out[j] = x0 * wt[j];
  for (int64_t c = 1; c < k; ++c) {
    const scalar_t xc = x[c];
    const scalar_t* __restrict__ w = wt + c * h;
    for (int64_t j = 0; j < h; ++j) out[j] += xc * w[j];
  }
}

// out[c] = g . wt[c, :] for c < k, each dot in 64 bytes of lanes combined in a fixed order.
template <typename scalar_t>
INFOMAX_TARGET_CLONES void row_dots_wt(const scalar_t* __restrict__ g,
                                       const scalar_t* __restrict__ wt, int64_t k, int64_t h,
                                       scalar_t* __restrict__ out) {
  constexpr int kLanes = 64 / sizeof(scalar_t);
  for (int64_t c = 0; c < k; ++c) {
    const scalar_t* __restrict__ w = wt + c * h;
    scalar_t lanes[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= h; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += g[j + l] * w[j + l];
    }
    for (int l = 0; j < h; ++j, ++l) lanes[l] += g[j] * w[j];
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    }
    out[c] = lanes[0];
  }
}

// acc[c, jj] += sum_r x[r, c] g[r, j0 + jj] over rows r < m, for c < k and jj < width
// (acc: (K, width) contiguous), rows in order.
template <typename scalar_t>
INFOMAX_TARGET_CLONES void accumulate_block(const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ g, int64_t m, int64_t k,
                                            int64_t h, int64_t j0, int64_t width,
                                            scalar_t* __restrict__ acc) {
  for (int64_t r = 0; r < m; ++r) {
    const scalar_t* __restrict__ gr = g + r * h + j0;
    for (int64_t c = 0; c < k; ++c) {
      const scalar_t xc = x[r * k + c];
      scalar_t* __restrict__ a = acc + c * width;
      for (int64_t jj = 0; jj < width; ++jj) a[jj] += xc * gr[jj];
    }
  }
}

// Columns of the weight gradient per task: the (K, kBlock) accumulator stays in L1.
constexpr int64_t kBlock = 128;

}  // namespace

bool narrow_products_serve(const Tensor& x, int64_t k) {
  return x.is_cpu() && k > 0 && k <= kNarrowMaxFeatures &&
         (x.scalar_type() == ScalarType::Float || x.scalar_type() == ScalarType::Double);
}

Tensor narrow_linear_cpu(const Tensor& x_in, const Tensor& w) {
  const Tensor x = as_contiguous(x_in);
  const int64_t m = x.size(0), k = x.size(1), h = w.size(0);
  Tensor out = empty_on(x, {m, h});
  if (m == 0 || h == 0) return out;
  dispatch_floating(x.scalar_type(), "narrow_linear_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const std::vector<scalar_t> wt = transposed<scalar_t>(w);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, m, grain_for(h * k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_times_wt(px + r * k, wt.data(), k, h, po + r * h);
    });
  });
  return out;
}

Tensor narrow_input_grad_cpu(const Tensor& g_in, const Tensor& w) {
  const Tensor g = as_contiguous(g_in);
  const int64_t m = g.size(0), h = g.size(1), k = w.size(1);
  Tensor out = empty_on(g, {m, k});
  if (m == 0) return out;
  dispatch_floating(g.scalar_type(), "narrow_input_grad_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const std::vector<scalar_t> wt = transposed<scalar_t>(w);
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, m, grain_for(h * k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_dots_wt(pg + r * h, wt.data(), k, h, po + r * k);
    });
  });
  return out;
}

void narrow_weight_grad_cpu(const Tensor& out, const Tensor& x_in, const Tensor& g_in,
                            const std::optional<Tensor>& x2_in,
                            const std::optional<Tensor>& g2_in) {
  const Tensor x = as_contiguous(x_in), g = as_contiguous(g_in);
  const std::optional<Tensor> x2 =
      x2_in.has_value() ? std::optional<Tensor>(as_contiguous(*x2_in)) : std::nullopt;
  const std::optional<Tensor> g2 =
      g2_in.has_value() ? std::optional<Tensor>(as_contiguous(*g2_in)) : std::nullopt;
  const int64_t h = out.size(0), k = out.size(1), m = x.size(0);
  const int64_t m2 = x2.has_value() ? x2->size(0) : 0;
  const int64_t s0 = out.stride(0), s1 = out.stride(1);
  const int64_t blocks = (h + kBlock - 1) / kBlock;
  dispatch_floating(x.scalar_type(), "narrow_weight_grad_cpu", [&](auto type_tag) {
    using scalar_t = typename decltype(type_tag)::type;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* px2 = x2.has_value() ? x2->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pg2 = g2.has_value() ? g2->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const int64_t work = (m + m2) * k * kBlock;
    torch::stable::parallel_for(0, blocks, grain_for(work), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> acc(static_cast<size_t>(k * kBlock));
      for (int64_t b = begin; b < end; ++b) {
        const int64_t j0 = b * kBlock, width = std::min(kBlock, h - j0);
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        accumulate_block(px, pg, m, k, h, j0, width, acc.data());
        if (px2) accumulate_block(px2, pg2, m2, k, h, j0, width, acc.data());
        for (int64_t c = 0; c < k; ++c) {
          for (int64_t jj = 0; jj < width; ++jj) po[(j0 + jj) * s0 + c * s1] = acc[c * width + jj];
        }
      }
    });
  });
}

}  // namespace infomax_ext
