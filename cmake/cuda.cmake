# CUDA setup for torch's CMake config on machines like ours (see shared/notes/build-facts.md).
# Included before find_package(Torch).

# torch ignores CMAKE_CUDA_ARCHITECTURES and, without this, probes for a GPU and falls back to
# sm_50, which nvcc 13 rejects.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} OR "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0")
endif()
set(TORCH_CUDA_ARCH_LIST "$ENV{TORCH_CUDA_ARCH_LIST}")
message(STATUS "infomax_ext: TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}")

# CMake 3.25 knows no CUDA20 dialect; torch would copy CMAKE_CXX_STANDARD (20) into it.
set(CMAKE_CUDA_STANDARD 17)
enable_language(CUDA)

# The first nvcc on PATH may be a wrapper outside the toolkit: take the root from the toolkit.
find_package(CUDAToolkit REQUIRED)
get_filename_component(_cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
set(CUDA_TOOLKIT_ROOT_DIR "${_cuda_root}" CACHE PATH "CUDA toolkit root" FORCE)

# torch's libraries name nvrtc, which may live only in the nvidia wheels beside torch.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]))"
  OUTPUT_VARIABLE _site OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
file(GLOB _nvidia_lib_dirs "${_site}/nvidia/*/lib")
find_library(CUDA_nvrtc_LIBRARY nvrtc HINTS ${CUDAToolkit_LIBRARY_DIR} ${_nvidia_lib_dirs})

function(infomax_ext_configure_cuda_target target)
  target_compile_definitions(${target} PRIVATE INFOMAX_EXT_WITH_CUDA=1)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 -O3 --expt-relaxed-constexpr>)
endfunction()
