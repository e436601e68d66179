#pragma once
// The vectorised elementwise loop of the CPU reductions (csrc/cpu/bound_cpu.cpp,
// csrc/cpu/infonce_cpu.cpp; csrc/cpu/bernoulli_cpu.cpp's loops take INFOMAX_TARGET_CLONES
// alike): out[i] = term(in[i]), one loop GCC vectorises when term is the
// branch-free math of csrc/cpu/vec_math.h (flatten: every call in term inlines), built for
// AVX-512, AVX2 and the x86-64 baseline, the widest the CPU runs chosen at load time.
// A file using it is built with -fno-trapping-math (selects become blends) and
// -ffp-contract=off (no fused multiply-adds: every build computes the same bits, and the same
// as a scalar call of the terms); see CMakeLists.txt.
#include <cstdint>
#include <type_traits>

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

// Runs body() built for AVX-512, AVX2 and the baseline, the widest the CPU runs: with flatten,
// body and everything it calls inline into each build, so its loops vectorise at that width
// (one build per lambda type).
template <typename F>
INFOMAX_TARGET_CLONES void run_widened(const F& body) {
  body();
}

// run_widened for float and double; the loops of bfloat16 and float16 (computed in float32
// through conversions) run as built for the baseline, which keeps the build time and the binary
// small.
template <typename scalar_t, typename F>
inline void run_vectorised(const F& body) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    run_widened(body);
  } else {
    body();
  }
}

// The per-row sums of the row reductions (csrc/cpu/infonce_cpu.cpp, bernoulli_cpu.cpp): a row's
// terms are filled kTermBlock at a time by a vectorised loop into a buffer, then added into
// kSumLanes independent partial sums in acc_t (additions in flight side by side, in a fixed
// order, so the sum's bits depend on the row alone).
constexpr int64_t kTermBlock = 512;
constexpr int kSumLanes = 8;

// Rows per task of parallel_for: about 16K entries each.
inline int64_t row_grain(int64_t entries_per_row) {
  return entries_per_row >= 16384 ? 1 : 16384 / entries_per_row;
}

// lanes[l] += buf[i] for i = l (mod kSumLanes), the tail of a partial group into lanes[0].
template <typename scalar_t, typename acc_t>
inline void add_to_lanes(const scalar_t* buf, int64_t count, acc_t* lanes) {
  int64_t i = 0;
  for (; i + kSumLanes <= count; i += kSumLanes) {
    for (int l = 0; l < kSumLanes; ++l) lanes[l] += acc_t(buf[i + l]);
  }
  for (; i < count; ++i) lanes[0] += acc_t(buf[i]);
}

template <typename acc_t>
inline acc_t lanes_total(const acc_t* lanes) {
  acc_t sum = 0;
  for (int l = 0; l < kSumLanes; ++l) sum += lanes[l];
  return sum;
}

}  // namespace infomax_ext
