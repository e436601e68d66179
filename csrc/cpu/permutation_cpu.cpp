// CPU kernels of the seeded permutation: counter-based keys, and the inverse of a permutation.
#include "../checks.h"
#include "../kernels.h"
#include "../permutation.h"

namespace infomax_ext {
Tensor permutation_keys_cpu(const Tensor& index, int64_t seed) {
  check_permutation_index(index);
  const Tensor idx = as_contiguous(index);
  Tensor keys = empty_like_shape(idx);
  const int64_t* in = idx.const_data_ptr<int64_t>();
  int64_t* out = keys.mutable_data_ptr<int64_t>();
  const uint64_t s = static_cast<uint64_t>(seed);
  torch::stable::parallel_for(0, idx.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = permutation_key(s, static_cast<uint64_t>(in[i]));
  });
  return keys;
}

Tensor inverse_permutation_cpu(const Tensor& perm) {
  check_permutation(perm);
  const Tensor p = as_contiguous(perm);
  const int64_t n = p.size(0);
  Tensor inverse = empty_like_shape(p);
  const int64_t* in = p.const_data_ptr<int64_t>();
  int64_t* out = inverse.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) out[i] = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = in[i];
    INFOMAX_CHECK(k >= 0 && k < n, "infomax_ext: perm is not a permutation: entry ", i, " is ", k,
                  ", outside [0, ", n, ")");
    INFOMAX_CHECK(out[k] < 0, "infomax_ext: perm is not a permutation: ", k, " appears twice");
    out[k] = i;
  }
  return inverse;
}

STABLE_TORCH_LIBRARY_IMPL(infomax_ext, CPU, m) {
  m.impl("permutation_keys", TORCH_BOX(&permutation_keys_cpu));
  m.impl("inverse_permutation", TORCH_BOX(&inverse_permutation_cpu));
}

}  // namespace infomax_ext
