// The autograd node of the chain ops (schemas in csrc/ops.cpp, maths in csrc/chain.cpp, NOTE: [chain
// maths]): the backward of the support step is the Hessian-vector product plus the losses' own term;
// when that backward is itself differentiated (create_graph: third order, or a torch.func transform)
// it recomputes the activations from the saved parameters with autograd recording the ATen ops.
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <fastmaml/node.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "fastmaml/chain.h"

namespace fastmaml {
namespace {

using at::Tensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using namespace fastmaml::chain;

Tensors join(const Tensor& first, Tensors rest) {
  rest.insert(rest.begin(), first);
  return rest;
}

// The node of chain_loss_and_grad (hessian = true; inputs: d losses, d grads) and of chain_loss
// (hessian = false; input: d losses). Next edges: the parameters, in gradient order.
struct ChainBackward final : torch::autograd::Node {
  bool hessian = false;
  std::vector<int64_t> layers;
  Tensor x, y;                              // the data: constants
  std::vector<SavedVariable> params;        // for the backward's recomputation under create_graph
  Tensors zs, ds;                           // activations and d_l of the forward (plain backward)
  Tensor r;

  std::string name() const override { return hessian ? "ChainLossAndGradBackward" : "ChainLossBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& p : params) p.reset_data();
    zs.clear();
    ds.clear();
    r.reset();
  }

  variable_list apply(variable_list&& gos) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Tensors ps;
    for (const auto& p : params) ps.push_back(p.unpack());
    auto [weights, biases] = split(ps, layers);
    Tensors z = zs, d = ds;
    Tensor res = r;
    // Differentiating this backward (create_graph, or a torch.func transform): recompute the
    // activations from the saved parameters with autograd recording.
    if (at::GradMode::is_enabled() ||
        c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) {
      std::tie(z, res, std::ignore) = forward(x, y, weights, biases, layers);
      if (hessian) d = std::get<1>(backprop(weights, z, res * mse_scale(res), layers));
    }
    Tensors out(ps.size());
    if (hessian) {
      bool any = false;
      Tensors us(ps.size());
      for (size_t i = 0; i < ps.size(); ++i) {
        any = any || gos[i + 1].defined();
        us[i] = gos[i + 1].defined() ? gos[i + 1] : at::zeros_like(ps[i]);
      }
      if (any) out = hvp(weights, z, d, mse_scale(res), us, layers);
    }
    if (gos[0].defined()) {
      Tensors vg = scaled_grads(weights, z, res, gos[0], layers);
      for (size_t i = 0; i < ps.size(); ++i) out[i] = out[i].defined() ? out[i] + vg[i] : vg[i];
    }
    return out;
  }
};

// The op with its node when a parameter requires grad: (losses, grads) for hessian, else losses.
Tensors with_node(bool hessian, const Tensor& x, const Tensor& y, at::TensorList weights,
                  const Biases& biases, at::IntArrayRef layers) {
  check_inputs(hessian ? "chain_loss_and_grad" : "chain_loss", x, y, weights, biases, layers);
  const Tensors params = flatten(weights, biases);
  Tensors zs, ds, grads;
  Tensor r, losses;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(zs, r, losses) = forward(x, y, weights, biases, layers);
    if (hessian) std::tie(grads, ds) = backprop(weights, zs, r * mse_scale(r), layers);
  }
  Tensors out = join(losses, std::move(grads));
  if (torch::autograd::compute_requires_grad(params)) {
    auto node = make_node<ChainBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(params));
    node->hessian = hessian;
    node->layers = layers.vec();
    node->x = x;
    node->y = y;
    for (const auto& p : params) node->params.emplace_back(p, /*is_output=*/false);
    node->zs = std::move(zs);
    node->ds = std::move(ds);
    node->r = std::move(r);
    torch::autograd::set_history(out, node);
  }
  return out;
}

std::tuple<Tensor, Tensors> chain_loss_and_grad(const Tensor& x, const Tensor& y, at::TensorList weights,
                                                const Biases& biases,
                                                at::IntArrayRef layers) {
  Tensors out = with_node(true, x, y, weights, biases, layers);
  return {out[0], Tensors(out.begin() + 1, out.end())};
}

Tensor chain_loss(const Tensor& x, const Tensor& y, at::TensorList weights,
                  const Biases& biases, at::IntArrayRef layers) {
  return with_node(false, x, y, weights, biases, layers)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmaml, Autograd, m) {
  m.impl("chain_loss_and_grad", TORCH_FN(chain_loss_and_grad));
  m.impl("chain_loss", TORCH_FN(chain_loss));
}

TORCH_LIBRARY_IMPL(fastmaml, CompositeExplicitAutograd, m) {
  m.impl("chain_loss_and_grad", TORCH_FN(chain_loss_and_grad));
  m.impl("chain_loss", TORCH_FN(chain_loss));
}

}  // namespace fastmaml
