// The Linear/ReLU chain maths (NOTE: [chain maths] in csrc/chain.cpp), shared by the kernels there
// and the ops' autograd node (csrc/autograd/chain.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace fastmaml::chain {

using Tensors = std::vector<at::Tensor>;
using Biases = c10::List<std::optional<at::Tensor>>;

// Per layer: kBias if it has a bias, | kRelu if a ReLU follows (the ops' `layers` argument).
constexpr int64_t kBias = 1, kRelu = 2;

// (activations z_0..z_L, residual r = z_L - y, per-task losses [T])
std::tuple<Tensors, at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& y, at::TensorList weights,
                                                    const Biases& biases, at::IntArrayRef layers);
// (gradients in parameter order, d_l per layer) from dz_L
std::tuple<Tensors, Tensors> backprop(at::TensorList weights, at::TensorList zs, const at::Tensor& dz_last,
                                      at::IntArrayRef layers);
// H u in parameter order (the R-operator), c the MSE's scale
Tensors hvp(at::TensorList weights, at::TensorList zs, at::TensorList ds, double c, at::TensorList us,
            at::IntArrayRef layers);
// the parameters in gradient order (per layer its weight, then its bias if any), and back
Tensors flatten(at::TensorList weights, const Biases& biases);
std::pair<Tensors, Biases> split(const Tensors& params, at::IntArrayRef layers);
double mse_scale(const at::Tensor& r);  // c = 2 / (N * out_features)
// d losses_t / d P_t = g_t: v_t g_t, back-propagated from dz_L = c r scaled per task
Tensors scaled_grads(at::TensorList weights, at::TensorList zs, const at::Tensor& r, const at::Tensor& v,
                     at::IntArrayRef layers);
// errors naming the argument and index, for either op
void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, at::TensorList weights,
                  const Biases& biases, at::IntArrayRef layers);

}  // namespace fastmaml::chain
