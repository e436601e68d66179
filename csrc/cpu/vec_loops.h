#pragma once
// The vectorised elementwise loop of the CPU reductions (csrc/cpu/bound_cpu.cpp,
// csrc/cpu/infonce_cpu.cpp): out[i] = term(in[i]), one loop GCC vectorises when term is the
// branch-free math of csrc/cpu/vec_math.h (flatten: every call in term inlines), built for
// AVX-512, AVX2 and the x86-64 baseline, the widest the CPU runs chosen at load time.
// A file using it is built with -fno-trapping-math (selects become blends) and
// -ffp-contract=off (no fused multiply-adds: every build computes the same bits, and the same
// as a scalar call of the terms); see CMakeLists.txt.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFOMAX_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define INFOMAX_TARGET_CLONES __attribute__((flatten))
#endif

namespace infomax_ext {

// out[i] = term(in[i]) for i < n.
template <typename scalar_t, typename F>
INFOMAX_TARGET_CLONES void fill_terms(const scalar_t* __restrict__ in, int64_t n,
                                      scalar_t* __restrict__ out, const F& term) {
  for (int64_t i = 0; i < n; ++i) out[i] = term(in[i]);
}

}  // namespace infomax_ext
