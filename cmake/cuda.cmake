# The CUDA kernels: nvcc for csrc/cuda, the CUDA runtime and libtorch_cuda (the stable ABI's
# current-stream call) linked by soname; both come with a CUDA build of torch.

# Architectures: data-centre (A100 8.0, H100/H200 9.0, B200 10.0) and consumer (RTX 30 8.6,
# RTX 40 8.9, RTX 50 12.0) GPUs as machine code, plus PTX of 12.0 for GPUs newer than these.
set(INFOMAX_EXT_CUDA_ARCHS "80-real;86-real;89-real;90-real;100-real;120" CACHE STRING
    "CMAKE_CUDA_ARCHITECTURES of the kernels (NN-real: machine code only; NN: also PTX)")
if(DEFINED ENV{INFOMAX_EXT_CUDA_ARCHS} AND NOT "$ENV{INFOMAX_EXT_CUDA_ARCHS}" STREQUAL "")
  set(INFOMAX_EXT_CUDA_ARCHS "$ENV{INFOMAX_EXT_CUDA_ARCHS}" CACHE STRING "" FORCE)
endif()
set(CMAKE_CUDA_ARCHITECTURES "${INFOMAX_EXT_CUDA_ARCHS}")
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
message(STATUS "infomax_ext: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${INFOMAX_EXT_CUDA_ARCHS}")

function(infomax_ext_configure_cuda_target target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 -lineinfo --expt-relaxed-constexpr>)
  target_compile_definitions(${target} PRIVATE USE_CUDA)
  find_library(TORCH_CUDA_LIBRARY torch_cuda PATHS "${TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(${target} PRIVATE "${TORCH_CUDA_LIBRARY}" CUDA::cudart)
  set_target_properties(${target} PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
  # The CUDA runtime of torch's nvidia wheels, if torch has not loaded it already.
  set_property(TARGET ${target} APPEND PROPERTY INSTALL_RPATH
               "$ORIGIN/../nvidia/cu${CUDAToolkit_VERSION_MAJOR}/lib")
endfunction()
