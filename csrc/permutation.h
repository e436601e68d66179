#pragma once
// Counter-based permutation keys: key(seed, i) depends on nothing but the seed and the index,
// so every device computes the same keys, and a stable sort of them gives the same
// permutation everywhere.
#include <cstdint>

#include "macros.h"

namespace infomax_ext {

INFOMAX_HOST_DEVICE uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// A 63-bit key, so signed and unsigned comparisons order keys the same way.
INFOMAX_HOST_DEVICE int64_t permutation_key(uint64_t seed, uint64_t index) {
  return static_cast<int64_t>(splitmix64(splitmix64(seed) ^ index) >> 1);
}

}  // namespace infomax_ext
