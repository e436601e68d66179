#pragma once
// Argument checks shared by the CPU and CUDA front ends: shapes, dtypes, devices and names are
// checked here, with the argument named, before any kernel runs. The entries of a permutation
// are checked as the kernels read them (a RuntimeError on the CPU, a device assert on CUDA).
#include <optional>
#include <string>
#include <vector>

#include "activations.h"
#include "tensor.h"

namespace infomax_ext {

inline void check_float_tensor(const Tensor& t, const char* name, int64_t dim) {
  INFOMAX_CHECK(t.defined(), "infomax_ext: ", name, " is undefined");
  INFOMAX_CHECK(t.dim() == dim, "infomax_ext: ", name, " must have ", dim, " dimension(s), got shape ",
              shape_of(t));
  const ScalarType dtype = t.scalar_type();
  INFOMAX_CHECK(dtype == ScalarType::Float || dtype == ScalarType::Double || is_reduced_float(dtype),
                "infomax_ext: ", name, " must be float32, float64, bfloat16 or float16, got ",
                dtype);
}

// A tensor of dim dimensions in float32 or float64 only (mi_bound's kernels).
inline void check_float32_or_64_tensor(const Tensor& t, const char* name, int64_t dim) {
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
// shuffled_half (M, H) or absent, bias (H), perm (M).
inline void check_paired_first_layer(const Tensor& data_half, const Tensor& latent_half,
                                     const std::optional<Tensor>& shuffled_half,
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
  if (shuffled_half.has_value() && shuffled_half->defined()) {
    check_float_tensor(*shuffled_half, "shuffled_half", 2);
    check_same(data_half, *shuffled_half, "data_half", "shuffled_half");
    INFOMAX_CHECK(shape_of(*shuffled_half) == shape_of(latent_half),
                  "infomax_ext: shuffled_half has shape ", shape_of(*shuffled_half),
                  " but latent_half has shape ", shape_of(latent_half));
  }
  check_index_vector(perm, data_half, "perm", m);
}

// The MI chain's first Linear layer on joint and shuffled pairs: hx (N, Dx), hz (M, Dz),
// hz_shuffled like hz or absent, weight (H, Dx + Dz), bias (H) or absent, perm (M), data_half
// (N, H) or absent (a precomputed constant), M = S N.
inline void check_paired_linear(const Tensor& hx, const Tensor& hz,
                                const std::optional<Tensor>& hz_shuffled, const Tensor& weight,
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
  if (hz_shuffled.has_value()) {
    check_float_tensor(*hz_shuffled, "hz_shuffled", 2);
    check_same(hx, *hz_shuffled, "hx", "hz_shuffled");
    INFOMAX_CHECK(shape_of(*hz_shuffled) == shape_of(hz), "infomax_ext: hz_shuffled has shape ",
                  shape_of(*hz_shuffled), " but hz has shape ", shape_of(hz));
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
inline void check_critic_head(const Tensor& hidden, const Tensor& weight,
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

inline void check_nwj_bound(const Tensor& t_joint, const Tensor& t_shuffled) {
  check_float_tensor(t_joint, "t_joint", 1);
  check_float_tensor(t_shuffled, "t_shuffled", 1);
  check_same(t_joint, t_shuffled, "t_joint", "t_shuffled");
  INFOMAX_CHECK(t_joint.size(0) >= 1 && t_shuffled.size(0) >= 1,
              "infomax_ext: nwj_bound needs at least one joint and one shuffled score");
}

// The layers of critic_mlp: hidden (R, H_0); weights[l] (H_{l+1}, H_l); biases[l] (H_{l+1}) or
// absent; one activation name and parameter per layer; head_weight (H_L), head_bias (1) or
// absent; R = 2 n_joint. Returns the layers' activations.
inline std::vector<Activation> check_critic_mlp(
    const Tensor& hidden, const std::vector<Tensor>& weights,
    const std::vector<std::optional<Tensor>>& biases, const std::vector<std::string>& activations,
    const std::vector<double>& params, const Tensor& head_weight,
    const std::optional<Tensor>& head_bias, int64_t n_joint, const std::string& head_activation) {
  check_float_tensor(hidden, "hidden", 2);
  const size_t layers = weights.size();
  INFOMAX_CHECK(biases.size() == layers && activations.size() == layers && params.size() == layers,
                "infomax_ext: critic_mlp takes one bias, activation and parameter per weight: got ",
                layers, " weights, ", biases.size(), " biases, ", activations.size(),
                " activations and ", params.size(), " parameters");
  std::vector<Activation> acts;
  int64_t width = hidden.size(1);
  for (size_t l = 0; l < layers; ++l) {
    const std::string name = "weights[" + std::to_string(l) + "]";
    check_float_tensor(weights[l], name.c_str(), 2);
    check_same(hidden, weights[l], "hidden", name.c_str());
    INFOMAX_CHECK(weights[l].size(1) == width, "infomax_ext: ", name, " has shape ",
                  shape_of(weights[l]), " but its layer's input has ", width, " features");
    width = weights[l].size(0);
    if (biases[l].has_value()) {
      const std::string bias_name = "biases[" + std::to_string(l) + "]";
      check_float_tensor(*biases[l], bias_name.c_str(), 1);
      check_same(hidden, *biases[l], "hidden", bias_name.c_str());
      INFOMAX_CHECK(biases[l]->size(0) == width, "infomax_ext: ", bias_name, " has ",
                    biases[l]->size(0), " entries but its layer has ", width, " units");
    }
    acts.push_back(checked_activation(activations[l]));
  }
  check_float_tensor(head_weight, "head_weight", 1);
  check_same(hidden, head_weight, "hidden", "head_weight");
  INFOMAX_CHECK(head_weight.size(0) == width, "infomax_ext: head_weight has ", head_weight.size(0),
                " entries but the last hidden layer has ", width, " units");
  if (head_bias.has_value()) {
    check_float_tensor(*head_bias, "head_bias", 1);
    check_same(hidden, *head_bias, "hidden", "head_bias");
    INFOMAX_CHECK(head_bias->size(0) == 1, "infomax_ext: head_bias must have 1 entry, got ",
                  head_bias->size(0));
  }
  INFOMAX_CHECK(n_joint >= 1 && 2 * n_joint == hidden.size(0), "infomax_ext: hidden has ",
                hidden.size(0), " rows, which must be n_joint = ", n_joint,
                " joint rows followed by as many shuffled rows");
  checked_activation(head_activation);
  return acts;
}

// What critic_mlp_forward kept: outputs[l] (R, H_{l+1}); pres[l] the same shape, or empty for
// identity and relu; pres[L] (R), the head's pre-activation; scores (R).
inline void check_critic_mlp_saved(const Tensor& hidden, const std::vector<Tensor>& weights,
                                const std::vector<Activation>& acts, const Tensor& scores,
                                const std::vector<Tensor>& outputs,
                                const std::vector<Tensor>& pres) {
  const size_t layers = weights.size();
  const int64_t rows = hidden.size(0);
  INFOMAX_CHECK(outputs.size() == layers && pres.size() == layers + 1,
                "infomax_ext: critic_mlp_backward needs ", layers, " outputs and ", layers + 1,
                " pre-activations (what critic_mlp_forward returned), got ", outputs.size(), " and ",
                pres.size());
  for (size_t l = 0; l < layers; ++l) {
    const std::string name = "outputs[" + std::to_string(l) + "]";
    check_float_tensor(outputs[l], name.c_str(), 2);
    check_same(hidden, outputs[l], "hidden", name.c_str());
    INFOMAX_CHECK(outputs[l].size(0) == rows && outputs[l].size(1) == weights[l].size(0) &&
                      outputs[l].is_contiguous(),
                  "infomax_ext: ", name, " has shape ", shape_of(outputs[l]), ", expected [",
                  rows, ", ", weights[l].size(0), "] contiguous");
    if (!derivative_from_output(acts[l])) {
      const std::string pre_name = "pres[" + std::to_string(l) + "]";
      check_same(hidden, pres[l], "hidden", pre_name.c_str());
      INFOMAX_CHECK(shape_of(pres[l]) == shape_of(outputs[l]) && pres[l].is_contiguous(),
                    "infomax_ext: ", pre_name, " has shape ", shape_of(pres[l]), ", expected ",
                    shape_of(outputs[l]), " contiguous");
    }
  }
  check_float_tensor(pres[layers], "the head's pre-activation", 1);
  check_float_tensor(scores, "scores", 1);
  INFOMAX_CHECK(pres[layers].size(0) == rows && scores.size(0) == rows,
                "infomax_ext: scores and the head's pre-activation must have ", rows, " entries");
}

}  // namespace infomax_ext
