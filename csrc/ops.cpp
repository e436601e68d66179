// The operator schemas of the infomax_ext namespace. Each backend (csrc/cpu, csrc/cuda)
// registers its kernels against them, csrc/paired_linear.cpp and csrc/critic_mlp.cpp the
// device-agnostic paired_linear and critic_mlp;
// each op's module python/infomax_ext/<op>_op.py adds its autograd formula and fake kernels.
// Built against the limited Python API (abi3) and the stable torch ABI: one binary serves every
// CPython >= 3.10 and every torch from TORCH_TARGET_VERSION on.
#include <Python.h>

#include "tensor.h"

extern "C" {
// An empty module: importing infomax_ext._C runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

STABLE_TORCH_LIBRARY(infomax_ext, m) {
  m.def("permutation_keys(Tensor index, int seed) -> Tensor");
  m.def("inverse_permutation(Tensor perm) -> Tensor");
  m.def(
      "paired_first_layer(Tensor data_half, Tensor latent_half, Tensor? shuffled_half, "
      "Tensor bias, Tensor perm, str activation, float param) -> Tensor");
  m.def(
      "paired_first_layer_backward(Tensor grad_out, Tensor data_half, Tensor latent_half, "
      "Tensor? shuffled_half, Tensor bias, Tensor perm, Tensor inverse_perm, str activation, "
      "float param, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "paired_linear(Tensor hx, Tensor hz, Tensor? hz_shuffled, Tensor weight, Tensor? bias, "
      "Tensor perm, str activation, float param, Tensor? data_half=None) -> Tensor");
  m.def(
      "paired_linear_forward(Tensor hx, Tensor hz, Tensor? hz_shuffled, Tensor weight, Tensor? bias, "
      "Tensor perm, str activation, float param, Tensor? data_half=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "paired_linear_backward(Tensor grad_out, Tensor hx, Tensor hz, Tensor? hz_shuffled, "
      "Tensor weight, Tensor data_half, Tensor latent_half, Tensor? shuffled_half, Tensor? bias, "
      "Tensor perm, str activation, float param, bool[5] output_mask, Tensor? out=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "critic_head(Tensor hidden, Tensor weight, Tensor? bias, int n_joint, str activation, "
      "float param) -> (Tensor, Tensor, Tensor)");
  m.def(
      "critic_head_backward(Tensor grad_bound, Tensor? grad_scores, Tensor hidden, Tensor weight, "
      "Tensor scores, Tensor pre, int n_joint, str activation, float param, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "critic_mlp(Tensor hidden, Tensor[] weights, Tensor?[] biases, str[] activations, "
      "float[] params, Tensor head_weight, Tensor? head_bias, int n_joint, str head_activation, "
      "float head_param) -> (Tensor, Tensor)");
  m.def(
      "critic_mlp_forward(Tensor hidden, Tensor[] weights, Tensor?[] biases, str[] activations, "
      "float[] params, Tensor head_weight, Tensor? head_bias, int n_joint, str head_activation, "
      "float head_param) -> (Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "critic_mlp_backward(Tensor grad_bound, Tensor? grad_scores, Tensor hidden, Tensor[] weights, "
      "Tensor?[] biases, str[] activations, float[] params, Tensor head_weight, "
      "Tensor? head_bias, Tensor scores, Tensor[] outputs, Tensor[] pres, int n_joint, "
      "str head_activation, float head_param, bool[] output_mask) "
      "-> (Tensor, Tensor[], Tensor[], Tensor, Tensor)");
  m.def(
      "critic_chain_forward(Tensor hx, Tensor hz, Tensor? hz_shuffled, Tensor weight, Tensor? bias, "
      "Tensor perm, str activation, float param, Tensor? data_half, Tensor[] weights, "
      "Tensor?[] biases, str[] activations, float[] params, Tensor head_weight, Tensor? head_bias, "
      "int n_joint, str head_activation, float head_param, Tensor? data_weight=None, "
      "Tensor? data_bias=None, Tensor? latent_weight=None, Tensor? latent_bias=None) "
      "-> (Tensor, Tensor, Tensor[])");
  m.def(
      "critic_chain_backward(Tensor? grad_bound, Tensor? grad_scores, Tensor hx, Tensor hz, "
      "Tensor? hz_shuffled, Tensor weight, Tensor? bias, Tensor perm, str activation, float param, "
      "Tensor hidden, Tensor[] halves, Tensor[] weights, Tensor?[] biases, str[] activations, "
      "float[] params, Tensor head_weight, Tensor? head_bias, Tensor scores, Tensor[] outputs, "
      "Tensor[] pres, int n_joint, str head_activation, float head_param, Tensor? x, Tensor? z, "
      "Tensor? data_weight, Tensor? latent_weight, bool[] output_mask) -> Tensor[]");
  m.def("linear_grads(Tensor grad, Tensor input, Tensor weight) -> (Tensor, Tensor)");
  m.def("mm_pair(Tensor a, Tensor b, Tensor c, Tensor d) -> (Tensor, Tensor)");
  m.def("nwj_bound(Tensor t_joint, Tensor t_shuffled) -> Tensor");
  m.def("nwj_bound_backward(Tensor grad, Tensor t_joint, Tensor t_shuffled) -> (Tensor, Tensor)");
  m.def(
      "mi_bound(Tensor t_joint, Tensor t_negatives, str bound, float param) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "mi_bound_backward(Tensor? grad_value, Tensor? grad_objective, Tensor t_joint, "
      "Tensor t_negatives, str bound, float param, Tensor? log_sum_exp=None) -> (Tensor, Tensor)");
  m.def("infonce_rows(Tensor rows, Tensor joint) -> (Tensor, Tensor)");
  m.def(
      "infonce_rows_backward(Tensor grad, Tensor rows, Tensor joint, Tensor row_lse) "
      "-> (Tensor, Tensor)");
  m.def("bernoulli_loglik(Tensor p, Tensor x) -> Tensor");
  m.def(
      "bernoulli_loglik_backward(Tensor grad, Tensor p, Tensor x, bool[2] output_mask) "
      "-> (Tensor, Tensor)");
}
