# CUDA setup for torch's CMake config on machines like ours (see shared/notes/build-facts.md).
# Included before find_package(Torch).

# torch ignores CMAKE_CUDA_ARCHITECTURES and, without this, probes for a GPU and falls back to
# sm_50, which nvcc 13 rejects.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} OR "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0")
endif()
set(TORCH_CUDA_ARCH_LIST "$ENV{TORCH_CUDA_ARCH_LIST}")
message(STATUS "infomax_ext: TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}")

# torch's headers need C++20, and torch copies CMAKE_CXX_STANDARD (20) into CMAKE_CUDA_STANDARD.
# CMake < 3.26 knows no nvcc flag for the CUDA20 dialect: name it, so the standard flag CMake
# adds (after our own flags, where a second -std would lose) is the right one.
enable_language(CUDA)
if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
endif()
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

# The first nvcc on PATH may be a wrapper outside the toolkit: take the root from the toolkit.
find_package(CUDAToolkit REQUIRED)
get_filename_component(_cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
set(CUDA_TOOLKIT_ROOT_DIR "${_cuda_root}" CACHE PATH "CUDA toolkit root" FORCE)

# torch's libraries name nvrtc, which this toolkit lacks; the nvidia wheels beside torch carry it,
# versioned only (libnvrtc.so.13), so name the versioned files too.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]))"
  OUTPUT_VARIABLE _site OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
file(GLOB _nvidia_lib_dirs "${_site}/nvidia/*/lib")
find_library(CUDA_nvrtc_LIBRARY NAMES nvrtc libnvrtc.so.13 libnvrtc.so.12
  HINTS ${CUDAToolkit_LIBRARY_DIR} ${_nvidia_lib_dirs})
if(NOT CUDA_nvrtc_LIBRARY)
  message(FATAL_ERROR "infomax_ext: libnvrtc not found in ${CUDAToolkit_LIBRARY_DIR} or ${_nvidia_lib_dirs}")
endif()
# torch's cuda.cmake caches its own copy; overwrite one left NOTFOUND by an earlier configure.
set(CUDA_NVRTC_LIB "${CUDA_nvrtc_LIBRARY}" CACHE FILEPATH "libnvrtc for torch's CMake config" FORCE)

function(infomax_ext_configure_cuda_target target)
  target_compile_definitions(${target} PRIVATE INFOMAX_EXT_WITH_CUDA=1)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 -lineinfo --expt-relaxed-constexpr>)
endfunction()
