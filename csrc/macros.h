#pragma once
// HOST_DEVICE marks per-element math that both the CPU kernels (g++) and the CUDA kernels
// (nvcc) compile, so the CPU tests exercise the arithmetic the GPU runs.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define INFOMAX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INFOMAX_HOST_DEVICE inline
#endif

// Math functions: std:: overloads on the host (float stays float), CUDA's global ones on the device.
#if defined(__CUDA_ARCH__)
#define INFOMAX_MATH(fn) ::fn
#else
#define INFOMAX_MATH(fn) std::fn
#endif
