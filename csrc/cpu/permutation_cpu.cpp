// CPU kernels of the seeded permutation: counter-based keys, and the inverse of a permutation.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include "../permutation.h"

namespace infomax_ext {
namespace {

at::Tensor permutation_keys_cpu(const at::Tensor& index, int64_t seed) {
  TORCH_CHECK(index.scalar_type() == at::kLong, "infomax_ext: index must be int64, got ",
              index.scalar_type());
  const at::Tensor idx = index.contiguous();
  at::Tensor keys = at::empty(idx.sizes(), idx.options());
  const int64_t* in = idx.const_data_ptr<int64_t>();
  int64_t* out = keys.mutable_data_ptr<int64_t>();
  const uint64_t s = static_cast<uint64_t>(seed);
  at::parallel_for(0, idx.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = permutation_key(s, static_cast<uint64_t>(in[i]));
  });
  return keys;
}

at::Tensor inverse_permutation_cpu(const at::Tensor& perm) {
  TORCH_CHECK(perm.dim() == 1 && perm.scalar_type() == at::kLong,
              "infomax_ext: perm must be a 1-D int64 tensor, got ", perm.scalar_type(), " of shape ",
              perm.sizes());
  const at::Tensor p = perm.contiguous();
  const int64_t n = p.size(0);
  at::Tensor inverse = at::full({n}, -1, p.options());
  const int64_t* in = p.const_data_ptr<int64_t>();
  int64_t* out = inverse.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = in[i];
    TORCH_CHECK(k >= 0 && k < n, "infomax_ext: perm is not a permutation: entry ", i, " is ", k,
                ", outside [0, ", n, ")");
    TORCH_CHECK(out[k] < 0, "infomax_ext: perm is not a permutation: ", k, " appears twice");
    out[k] = i;
  }
  return inverse;
}

}  // namespace

TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("permutation_keys", &permutation_keys_cpu);
  m.impl("inverse_permutation", &inverse_permutation_cpu);
}

}  // namespace infomax_ext
