#pragma once
// The tensor API of the kernels: PyTorch's stable C ABI (torch/csrc/stable), so one binary loads
// on every torch release from the TORCH_TARGET_VERSION set by CMake on. The aliases and helpers
// below cover what the kernels use most; the rest call torch::stable directly.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>
#include <torch/headeronly/util/Exception.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// A user error: throws std::runtime_error (RuntimeError in Python) whose message is the pieces
// streamed, nothing else (no C++ file or function names).
#define INFOMAX_CHECK(cond, ...)                                                         \
  do {                                                                                   \
    if (!(cond)) [[unlikely]] {                                                          \
      throw std::runtime_error(::infomax_ext::detail::concat(__VA_ARGS__));              \
    }                                                                                    \
  } while (0)

namespace infomax_ext {
namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

// "[2, 3]": a tensor's shape for error messages.
inline std::string shape_of(const Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) out << (d ? ", " : "") << t.size(d);
  out << "]";
  return out.str();
}

// "cpu", "cuda:0", "meta": a tensor's device for error messages.
inline std::string device_of(const Tensor& t) {
  const auto device = t.device();
  std::ostringstream out;
  switch (device.type()) {
    case torch::headeronly::DeviceType::CPU: out << "cpu"; break;
    case torch::headeronly::DeviceType::CUDA: out << "cuda:" << int(device.index()); break;
    case torch::headeronly::DeviceType::Meta: out << "meta"; break;
    default: out << "device type " << int(device.type()); break;
  }
  return out.str();
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.device().type() == b.device().type() && a.get_device_index() == b.get_device_index();
}

// Tensors the ops make for themselves (their outputs, scratch, views of operands) come from the C
// shim's functions directly, not from ops called by name through the dispatcher: each dispatcher
// call costs 0.5-0.8 us alone and more inside a call (boxing, the view's autograd metadata), and an
// eager call of the Julia chain made about fifty (bench/fixed_cost_notes.md, "Twelfth session").

namespace detail {
// Contiguous strides of `sizes` (a size of 0 counts as 1, as torch's).
inline void contiguous_strides(const int64_t* sizes, size_t ndim, int64_t* strides) {
  int64_t stride = 1;
  for (size_t d = ndim; d-- > 0;) {
    strides[d] = stride;
    stride *= sizes[d] > 1 ? sizes[d] : 1;
  }
}

// A new uninitialised contiguous tensor of `sizes` with like's device and dtype code `dtype`
// (like's own when null).
inline Tensor empty_with(const Tensor& like, const int64_t* sizes, size_t ndim,
                         const int32_t* dtype) {
  constexpr size_t kMaxDim = 8;
  INFOMAX_CHECK(ndim <= kMaxDim, "infomax_ext: a tensor of ", ndim, " dimensions (at most ",
                kMaxDim, ")");
  int64_t strides[kMaxDim];
  contiguous_strides(sizes, ndim, strides);
  int32_t device_type = 0, device_index = 0, code = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  if (dtype != nullptr) {
    code = *dtype;
  } else {
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(like.get(), &code));
  }
  AtenTensorHandle out = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(static_cast<int64_t>(ndim), sizes,
                                                         strides, code, device_type,
                                                         device_index, &out));
  return Tensor(out);
}
}  // namespace detail

// An uninitialised tensor of `shape` with t's device and the given (default: t's) dtype.
inline Tensor empty_on(const Tensor& t, std::initializer_list<int64_t> shape) {
  return detail::empty_with(t, shape.begin(), shape.size(), nullptr);
}
inline Tensor empty_on(const Tensor& t, std::initializer_list<int64_t> shape, ScalarType dtype) {
  const int32_t code = torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype));
  return detail::empty_with(t, shape.begin(), shape.size(), &code);
}
inline Tensor empty_like_shape(const Tensor& t) {
  const auto sizes = t.sizes();
  return detail::empty_with(t, sizes.data(), sizes.size(), nullptr);
}

// The 2-D tensor (rows, cols) with strides (row_stride, col_stride) on x's storage, starting
// `offset` elements after x's first element: a view of x for the ops' own use (operands and
// places to write), made by the shim without the dispatcher. Autograd does not know it as a view
// (no shared version counter): the ops never return one that aliases an input.
inline Tensor restrided(const Tensor& x, int64_t rows, int64_t cols, int64_t row_stride,
                        int64_t col_stride, int64_t offset) {
  const int64_t sizes[2] = {rows, cols};
  const int64_t strides[2] = {row_stride, col_stride};
  AtenTensorHandle out = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(
      aoti_torch__reinterpret_tensor(x.get(), 2, sizes, strides, offset, &out));
  return Tensor(out);
}

// t itself when it is already contiguous (no dispatcher call), else a contiguous copy.
inline Tensor as_contiguous(const Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// Operators called through the dispatcher (so each device runs its own kernel: MKL or oneDNN on
// the CPU, cuBLAS on CUDA): op "ns::name", its overload ("" for the default), the arguments; the
// first result.
template <typename... Args>
inline Tensor call_op(const char* op, const char* overload, const Args&... args) {
  std::array<StableIValue, sizeof...(Args)> stack{torch::stable::detail::from(args)...};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(op, overload, stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

// The matrix product a @ b.
inline Tensor mm(const Tensor& a, const Tensor& b) { return call_op("aten::mm", "", a, b); }

// out = a @ b, written into out (which may be a strided view).
inline void mm_out(const Tensor& out, const Tensor& a, const Tensor& b) {
  call_op("aten::mm", "out", a, b, out);
}

// The transpose of a 2-D tensor (restrided: a view for the ops' own use).
inline Tensor t(const Tensor& x) {
  return restrided(x, x.size(1), x.size(0), x.stride(1), x.stride(0), 0);
}

template <typename T>
struct TypeTag {
  using type = T;
};

using BFloat16 = torch::headeronly::BFloat16;
using Half = torch::headeronly::Half;

// Calls f(TypeTag<scalar_t>{}) for a float32 or float64 dtype (mi_bound's kernels).
template <typename F>
inline void dispatch_floating(ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case ScalarType::Float: f(TypeTag<float>{}); break;
    case ScalarType::Double: f(TypeTag<double>{}); break;
    default: INFOMAX_CHECK(false, "infomax_ext: ", op, " supports float32 and float64, got ", dtype);
  }
}

// Calls f(TypeTag<scalar_t>{}) for a float32, float64, bfloat16 or float16 dtype (the dtypes
// checks.h admits; the kernels of the MI chain and the NWJ bound).
template <typename F>
inline void dispatch_floating_and_reduced(ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case ScalarType::Float: f(TypeTag<float>{}); break;
    case ScalarType::Double: f(TypeTag<double>{}); break;
    case ScalarType::BFloat16: f(TypeTag<BFloat16>{}); break;
    case ScalarType::Half: f(TypeTag<Half>{}); break;
    default:
      INFOMAX_CHECK(false, "infomax_ext: ", op,
                    " supports float32, float64, bfloat16 and float16, got ", dtype);
  }
}

// The type the kernels compute in for a stored type T (as ATen's opmath_type): float for
// bfloat16 and float16 (activations, their derivatives, exp, the bound), T itself otherwise.
// Tensors are read as T, converted, computed on, and rounded back to T once when stored.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<BFloat16> {
  using type = float;
};
template <>
struct OpMath<Half> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// Accumulation type of sums: double on the CPU; on the GPU the compute type (float for float32,
// bfloat16 and float16; double for float64), as ATen's acc_type.
template <typename T, bool kCuda>
using acc_type = std::conditional_t<kCuda, opmath_t<T>, double>;

template <typename T>
constexpr ScalarType scalar_type_of() {
  if constexpr (std::is_same_v<T, float>) return ScalarType::Float;
  else if constexpr (std::is_same_v<T, double>) return ScalarType::Double;
  else if constexpr (std::is_same_v<T, BFloat16>) return ScalarType::BFloat16;
  else {
    static_assert(std::is_same_v<T, Half>, "scalar_type_of: not a floating type of the kernels");
    return ScalarType::Half;
  }
}

// bfloat16 and float16: stored in 16 bits, computed in float32.
inline bool is_reduced_float(ScalarType dtype) {
  return dtype == ScalarType::BFloat16 || dtype == ScalarType::Half;
}

// The dtype of the bound (and of its incoming gradient) for scores of dtype `dtype`: float32 for
// bfloat16 and float16 scores (its sums and exp run in float32, where exp(t - 1) of a float16
// score near 15 overflows float16), the scores' dtype otherwise.
inline ScalarType bound_scalar_type(ScalarType dtype) {
  return is_reduced_float(dtype) ? ScalarType::Float : dtype;
}

}  // namespace infomax_ext
