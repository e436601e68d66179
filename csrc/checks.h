#pragma once
// Argument checks shared by the CPU and CUDA front ends: shapes, dtypes, devices and names are
// checked here, with the argument named, before any kernel runs. The entries of a permutation
// are checked as the kernels read them (a RuntimeError on the CPU, a device assert on CUDA).
#include <optional>
#include <string>

#include "activations.h"
#include "tensor.h"

namespace infomax_ext {

inline void check_float_tensor(const Tensor& t, const char* name, int64_t dim) {
  INFOMAX_CHECK(t.defined(), "infomax_ext: ", name, " is undefined");
  INFOMAX_CHECK(t.dim() == dim, "infomax_ext: ", name, " must have ", dim, " dimension(s), got shape ",
              shape_of(t));
  INFOMAX_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double,
              "infomax_ext: ", name, " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same(const Tensor& ref, const Tensor& t, const char* ref_name,
                       const char* name) {
  INFOMAX_CHECK(t.scalar_type() == ref.scalar_type(), "infomax_ext: dtype mismatch: ", name, " is ",
              t.scalar_type(), " but ", ref_name, " is ", ref.scalar_type());
  INFOMAX_CHECK(same_device(t, ref), "infomax_ext: device mismatch: ", name, " is on ",
              device_of(t), " but ", ref_name, " is on ", device_of(ref));
}

inline void check_index_vector(const Tensor& perm, const Tensor& ref, const char* name,
                               int64_t length) {
  INFOMAX_CHECK(perm.defined() && perm.dim() == 1, "infomax_ext: ", name,
              " must be a 1-D tensor, got shape ", shape_of(perm));
  INFOMAX_CHECK(perm.scalar_type() == ScalarType::Long, "infomax_ext: ", name, " must be int64, got ",
              perm.scalar_type());
  INFOMAX_CHECK(same_device(perm, ref), "infomax_ext: device mismatch: ", name, " is on ",
              device_of(perm), " but the data is on ", device_of(ref));
  INFOMAX_CHECK(perm.size(0) == length, "infomax_ext: ", name, " has length ", perm.size(0),
              " but the latent half has ", length, " rows");
}

// permutation_keys: the indices whose keys are wanted, int64 of any shape.
inline void check_permutation_index(const Tensor& index) {
  INFOMAX_CHECK(index.scalar_type() == ScalarType::Long, "infomax_ext: index must be int64, got ",
                index.scalar_type());
}

// inverse_permutation: a 1-D int64 tensor (whether it is a permutation is checked as it is read).
inline void check_permutation(const Tensor& perm) {
  INFOMAX_CHECK(perm.dim() == 1 && perm.scalar_type() == ScalarType::Long,
                "infomax_ext: perm must be a 1-D int64 tensor, got ", perm.scalar_type(),
                " of shape ", shape_of(perm));
}

inline Activation checked_activation(const std::string& name) {
  Activation act;
  INFOMAX_CHECK(parse_activation(name, &act), "infomax_ext: unknown activation '", name,
                "'; supported: ", supported_activations());
  return act;
}

// Shapes of the paired first layer: data_half (N, H), latent_half (M, H) with M = S * N,
// shuffled_source (M, H) or absent, bias (H), perm (M).
inline void check_paired_first_layer(const Tensor& data_half, const Tensor& latent_half,
                                     const std::optional<Tensor>& shuffled_source,
                                     const Tensor& bias, const Tensor& perm) {
  check_float_tensor(data_half, "data_half", 2);
  check_float_tensor(latent_half, "latent_half", 2);
  check_float_tensor(bias, "bias", 1);
  check_same(data_half, latent_half, "data_half", "latent_half");
  check_same(data_half, bias, "data_half", "bias");
  const int64_t n = data_half.size(0), h = data_half.size(1), m = latent_half.size(0);
  INFOMAX_CHECK(n >= 2, "infomax_ext: the MI bound needs a batch of at least 2 samples, got ", n);
  INFOMAX_CHECK(latent_half.size(1) == h, "infomax_ext: latent_half has ", latent_half.size(1),
              " columns but data_half has ", h);
  INFOMAX_CHECK(m % n == 0 && m >= n, "infomax_ext: latent_half has ", m,
              " rows, which is not a positive multiple of the ", n, " rows of data_half");
  INFOMAX_CHECK(bias.size(0) == h, "infomax_ext: bias has ", bias.size(0), " entries but the layer has ",
              h, " units");
  if (shuffled_source.has_value() && shuffled_source->defined()) {
    check_float_tensor(*shuffled_source, "shuffled_source", 2);
    check_same(data_half, *shuffled_source, "data_half", "shuffled_source");
    INFOMAX_CHECK(shape_of(*shuffled_source) == shape_of(latent_half),
                  "infomax_ext: shuffled_source has shape ", shape_of(*shuffled_source),
                  " but latent_half has shape ", shape_of(latent_half));
  }
  check_index_vector(perm, data_half, "perm", m);
}

// The MI chain's first Linear layer on joint and shuffled pairs: hx (N, Dx), hz (M, Dz),
// hz_source like hz or absent, weight (H, Dx + Dz), bias (H) or absent, perm (M), data_half
// (N, H) or absent (a precomputed constant), M = S N.
inline void check_paired_linear(const Tensor& hx, const Tensor& hz,
                                const std::optional<Tensor>& hz_source, const Tensor& weight,
                                const std::optional<Tensor>& bias, const Tensor& perm,
                                const std::string& activation,
                                const std::optional<Tensor>& data_half) {
  check_float_tensor(hx, "hx", 2);
  check_float_tensor(hz, "hz", 2);
  check_float_tensor(weight, "weight", 2);
  check_same(hx, hz, "hx", "hz");
  check_same(hx, weight, "hx", "weight");
  INFOMAX_CHECK(weight.size(1) == hx.size(1) + hz.size(1), "infomax_ext: the first layer's weight takes ",
                weight.size(1), " features but hx has ", hx.size(1), " and hz has ", hz.size(1));
  if (hz_source.has_value()) {
    check_float_tensor(*hz_source, "hz_source", 2);
    check_same(hx, *hz_source, "hx", "hz_source");
    INFOMAX_CHECK(shape_of(*hz_source) == shape_of(hz), "infomax_ext: hz_source has shape ",
                  shape_of(*hz_source), " but hz has shape ", shape_of(hz));
  }
  if (bias.has_value()) {
    check_float_tensor(*bias, "bias", 1);
    check_same(hx, *bias, "hx", "bias");
    INFOMAX_CHECK(bias->size(0) == weight.size(0), "infomax_ext: bias has ", bias->size(0),
                  " entries but the layer has ", weight.size(0), " units");
  }
  if (data_half.has_value()) {
    check_float_tensor(*data_half, "data_half", 2);
    check_same(hx, *data_half, "hx", "data_half");
    INFOMAX_CHECK(data_half->size(0) == hx.size(0) && data_half->size(1) == weight.size(0),
                  "infomax_ext: data_half has shape ", shape_of(*data_half), ", expected [",
                  hx.size(0), ", ", weight.size(0), "] (hx @ weight[:, :Dx].T)");
  }
  const int64_t n = hx.size(0), m = hz.size(0);
  INFOMAX_CHECK(n >= 2, "infomax_ext: the MI bound needs a batch of at least 2 samples, got ", n);
  INFOMAX_CHECK(m % n == 0 && m >= n, "infomax_ext: hz has ", m,
                " rows, which is not a positive multiple of the ", n, " rows of hx");
  check_index_vector(perm, hx, "perm", m);
  checked_activation(activation);
}

// Shapes of the NWJ head: hidden (R, h) whose first n_joint rows are joint pairs, weight (h),
// bias (1) or absent.
inline void check_nwj_head(const Tensor& hidden, const Tensor& weight,
                           const std::optional<Tensor>& bias, int64_t n_joint) {
  check_float_tensor(hidden, "hidden", 2);
  check_float_tensor(weight, "weight", 1);
  check_same(hidden, weight, "hidden", "weight");
  INFOMAX_CHECK(weight.size(0) == hidden.size(1), "infomax_ext: weight has ", weight.size(0),
              " entries but hidden has ", hidden.size(1), " columns");
  if (bias.has_value() && bias->defined()) {
    check_float_tensor(*bias, "bias", 1);
    check_same(hidden, *bias, "hidden", "bias");
    INFOMAX_CHECK(bias->size(0) == 1, "infomax_ext: bias of the output layer must have 1 entry, got ",
                bias->size(0));
  }
  INFOMAX_CHECK(n_joint >= 1 && n_joint < hidden.size(0), "infomax_ext: n_joint = ", n_joint,
              " must leave at least one joint and one shuffled row of the ", hidden.size(0), " rows");
}

inline void check_nwj_bound(const Tensor& t_joint, const Tensor& t_marg) {
  check_float_tensor(t_joint, "t_joint", 1);
  check_float_tensor(t_marg, "t_marg", 1);
  check_same(t_joint, t_marg, "t_joint", "t_marg");
  INFOMAX_CHECK(t_joint.size(0) >= 1 && t_marg.size(0) >= 1,
              "infomax_ext: nwj_bound needs at least one joint and one shuffled score");
}

}  // namespace infomax_ext
