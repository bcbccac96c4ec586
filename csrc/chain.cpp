// The inner gradients of a task-batched Linear/ReLU chain under the mean squared error, and their
// backward, written out: two ops with their own autograd node, called by the batched inner loop
// (fastmaml/batched_mlp.py). For the small MLPs of sine regression each ATen op costs more in
// dispatch and autograd bookkeeping than in arithmetic: here one op call does a whole support step.
//
// NOTE: [chain maths]
// All tensors task-batched: x [T, N, in], weights W_l [T, out, in], biases b_l [T, out].
//   z_0 = x,   h_l = z_{l-1} W_l^T + b_l,   z_l = relu(h_l) or h_l,   r = z_L - y,
//   losses_t = mean over (n, j) of r^2
//   gradient (chain_backprop from dz_L = c r, c = 2 / (N * out_features)):
//     d_l = dz_l * m_l (m_l = [z_l > 0] after a ReLU, as autograd's relu backward, else 1),
//     gW_l = d_l^T z_{l-1},  gb_l = sum_n d_l,  dz_{l-1} = d_l W_l
//   its VJP u -> H u (chain_hvp; the Hessian is symmetric), by the R-operator
//   R{.} = d/de (.)(P + e u) (Pearlmutter 1994), with R{m_l} = 0 (ReLU is piecewise linear):
//     Rz_0 = 0,  Rh_l = z_{l-1} uW_l^T + ub_l + Rz_{l-1} W_l^T,  Rz_l = Rh_l * m_l,
//     Rdz_L = c Rz_L,  Rd_l = Rdz_l * m_l,  (Hu)W_l = Rd_l^T z_{l-1} + d_l^T Rz_{l-1},
//     (Hu)b_l = sum_n Rd_l,  Rdz_{l-1} = Rd_l W_l + d_l uW_l
// Gradients come in the order of the parameters: per layer its weight, then its bias if it has one.
// The ops' autograd node (ChainBackward) computes its backward from the activations kept by the
// forward; when that backward is itself differentiated (create_graph: third order, or a torch.func
// transform) it recomputes them from the saved parameters with autograd recording the ATen ops.
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

namespace fastmaml {
namespace {

using at::Tensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using Tensors = std::vector<Tensor>;

// Per layer: kBias if it has a bias, | kRelu if a ReLU follows (the ops' `layers` argument).
constexpr int64_t kBias = 1, kRelu = 2;

// Batched products of [T, m, k] and [T, k, n]. A contraction over k = 1 (the first layer of a
// one-input MLP, the last of a one-output one) is an outer product, and a^T b with one column in b
// a reduction: elementwise, each is 2-3x cheaper than the bmm here.
Tensor batched_mm(const Tensor& a, const Tensor& b) { return a.sym_size(2) == 1 ? a * b : at::bmm(a, b); }

Tensor batched_addmm(const Tensor& c, const Tensor& a, const Tensor& b) {
  return a.sym_size(2) == 1 ? at::addcmul(c, a, b) : at::baddbmm(c, a, b);
}

Tensor batched_tmm(const Tensor& a, const Tensor& b) {  // a^T b
  return b.sym_size(2) == 1 ? (a * b).sum(1, /*keepdim=*/true).transpose(1, 2) : at::bmm(a.transpose(1, 2), b);
}

// acc += a b and acc += a^T b, in place: acc is a temporary of ours (not a view of an input, and
// saved by no autograd node), so no copy of it into a fresh result.
void add_mm_(Tensor& acc, const Tensor& a, const Tensor& b) {
  a.sym_size(2) == 1 ? acc.addcmul_(a, b) : acc.baddbmm_(a, b);
}

void add_tmm_(Tensor& acc, const Tensor& a, const Tensor& b) {
  b.sym_size(2) == 1 ? acc.add_(batched_tmm(a, b)) : acc.baddbmm_(a.transpose(1, 2), b);
}

Tensor affine(const Tensor& z, const Tensor& w, const std::optional<Tensor>& b) {
  return b ? batched_addmm(b->unsqueeze(1), z, w.transpose(1, 2)) : batched_mm(z, w.transpose(1, 2));
}

Tensor mask(const Tensor& v, const Tensor& z) { return at::threshold_backward(v, z, 0); }  // v where z > 0

std::tuple<Tensors, Tensor, Tensor> chain_forward(const Tensor& x, const Tensor& y, at::TensorList weights,
                                                  const c10::List<std::optional<Tensor>>& biases,
                                                  at::IntArrayRef layers) {
  Tensors zs{x};
  zs.reserve(weights.size() + 1);
  for (size_t l = 0; l < weights.size(); ++l) {
    Tensor h = affine(zs.back(), weights[l], biases.get(l));
    zs.push_back(layers[l] & kRelu ? h.relu() : h);
  }
  Tensor r = zs.back() - y;
  Tensor losses = r.square().flatten(1).mean(1);
  return {std::move(zs), std::move(r), std::move(losses)};
}

std::tuple<Tensors, Tensors> chain_backprop(at::TensorList weights, at::TensorList zs, const Tensor& dz_last,
                                            at::IntArrayRef layers) {
  const size_t L = weights.size();
  Tensors ds(L), grads;
  std::vector<Tensors> per_layer(L);
  Tensor dz = dz_last;
  for (size_t l = L; l-- > 0;) {
    const Tensor& d = ds[l] = layers[l] & kRelu ? mask(dz, zs[l + 1]) : dz;
    per_layer[l].push_back(batched_tmm(d, zs[l]));
    if (layers[l] & kBias) per_layer[l].push_back(d.sum(1));
    if (l) dz = batched_mm(d, weights[l]);
  }
  for (auto& g : per_layer) grads.insert(grads.end(), g.begin(), g.end());
  return {std::move(grads), std::move(ds)};
}

Tensors chain_hvp(at::TensorList weights, at::TensorList zs, at::TensorList ds, double c, at::TensorList us,
                  at::IntArrayRef layers) {
  const size_t L = weights.size();
  std::vector<Tensor> uw(L);
  std::vector<std::optional<Tensor>> ub(L);
  size_t k = 0;
  for (size_t l = 0; l < L; ++l) {
    uw[l] = us[k++];
    if (layers[l] & kBias) ub[l] = us[k++];
  }
  Tensors rzs(L + 1);  // rzs[0] = R z_0 = 0: left undefined, its terms skipped
  for (size_t l = 0; l < L; ++l) {
    Tensor rh = affine(zs[l], uw[l], ub[l]);
    if (l) add_mm_(rh, rzs[l], weights[l].transpose(1, 2));
    rzs[l + 1] = layers[l] & kRelu ? mask(rh, zs[l + 1]) : rh;
  }
  std::vector<Tensors> per_layer(L);
  Tensor rdz = rzs[L] * c;
  for (size_t l = L; l-- > 0;) {
    Tensor rd = layers[l] & kRelu ? mask(rdz, zs[l + 1]) : rdz;
    Tensor hw = batched_tmm(rd, zs[l]);
    if (l) add_tmm_(hw, ds[l], rzs[l]);
    per_layer[l].push_back(hw);
    if (layers[l] & kBias) per_layer[l].push_back(rd.sum(1));
    if (l) {
      rdz = batched_mm(rd, weights[l]);
      add_mm_(rdz, ds[l], uw[l]);
    }
  }
  Tensors out;
  for (auto& h : per_layer) out.insert(out.end(), h.begin(), h.end());
  return out;
}

// ---- the ops and their autograd node ------------------------------------------------------

Tensors join(const Tensor& first, Tensors rest) {
  rest.insert(rest.begin(), first);
  return rest;
}

// The parameters in gradient order (per layer its weight, then its bias if any) and back.
Tensors flatten(at::TensorList weights, const c10::List<std::optional<Tensor>>& biases) {
  Tensors params;
  for (size_t l = 0; l < weights.size(); ++l) {
    params.push_back(weights[l]);
    if (std::optional<Tensor> b = biases.get(l)) params.push_back(*b);
  }
  return params;
}

std::pair<Tensors, c10::List<std::optional<Tensor>>> split(const Tensors& params, at::IntArrayRef layers) {
  Tensors weights;
  c10::List<std::optional<Tensor>> biases;
  size_t k = 0;
  for (int64_t flags : layers) {
    weights.push_back(params[k++]);
    biases.push_back(flags & kBias ? std::optional<Tensor>(params[k++]) : std::nullopt);
  }
  return {std::move(weights), std::move(biases)};
}

double mse_scale(const Tensor& r) { return 2.0 / static_cast<double>(r.numel() / r.size(0)); }  // c

// d losses_t / d P_t = g_t: v_t g_t, back-propagated from dz_L = c r scaled per task.
Tensors scaled_grads(at::TensorList weights, at::TensorList zs, const Tensor& r, const Tensor& v,
                     at::IntArrayRef layers) {
  return std::get<0>(chain_backprop(weights, zs, r * (v * mse_scale(r)).view({-1, 1, 1}), layers));
}

void check_inputs(const char* op, const Tensor& x, const Tensor& y, at::TensorList weights,
                  const c10::List<std::optional<Tensor>>& biases, at::IntArrayRef layers) {
  TORCH_CHECK(!weights.empty(), "fastmaml::", op, ": weights is empty");
  TORCH_CHECK(layers.size() == weights.size(), "fastmaml::", op, ": layers has ", layers.size(),
              " entries but weights has ", weights.size());
  TORCH_CHECK(biases.size() == weights.size(), "fastmaml::", op, ": biases has ", biases.size(),
              " entries but weights has ", weights.size());
  TORCH_CHECK(x.dim() == 3, "fastmaml::", op, ": x must be [tasks, examples, features], got ", x.sizes());
  const int64_t T = x.size(0);
  int64_t features = x.size(2);
  for (size_t l = 0; l < weights.size(); ++l) {
    const Tensor& w = weights[l];
    TORCH_CHECK(w.dim() == 3 && w.size(0) == T && w.size(2) == features, "fastmaml::", op, ": weights[", l,
                "] must be [", T, ", out, ", features, "], got ", w.sizes());
    const std::optional<Tensor> b = biases.get(l);
    TORCH_CHECK(b.has_value() == bool(layers[l] & kBias), "fastmaml::", op, ": biases[", l, "] and layers[", l,
                "] disagree on whether layer ", l, " has a bias");
    TORCH_CHECK(!b || b->sizes() == w.sizes().slice(0, 2), "fastmaml::", op, ": biases[", l, "] must be ",
                w.sizes().slice(0, 2), ", got ", b->sizes());
    features = w.size(1);
  }
  TORCH_CHECK(y.dim() == 3 && y.size(0) == T && y.size(1) == x.size(1) && y.size(2) == features, "fastmaml::", op,
              ": y must be [", T, ", ", x.size(1), ", ", features, "] (the output's shape), got ", y.sizes());
  TORCH_CHECK(!x.requires_grad() && !y.requires_grad(), "fastmaml::", op,
              ": x and y must not require grad (only the parameters are differentiated)");
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
      std::tie(z, res, std::ignore) = chain_forward(x, y, weights, biases, layers);
      if (hessian) d = std::get<1>(chain_backprop(weights, z, res * mse_scale(res), layers));
    }
    Tensors out(ps.size());
    if (hessian) {
      bool any = false;
      Tensors us(ps.size());
      for (size_t i = 0; i < ps.size(); ++i) {
        any = any || gos[i + 1].defined();
        us[i] = gos[i + 1].defined() ? gos[i + 1] : at::zeros_like(ps[i]);
      }
      if (any) out = chain_hvp(weights, z, d, mse_scale(res), us, layers);
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
                  const c10::List<std::optional<Tensor>>& biases, at::IntArrayRef layers) {
  check_inputs(hessian ? "chain_loss_and_grad" : "chain_loss", x, y, weights, biases, layers);
  const Tensors params = flatten(weights, biases);
  Tensors zs, ds, grads;
  Tensor r, losses;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(zs, r, losses) = chain_forward(x, y, weights, biases, layers);
    if (hessian) std::tie(grads, ds) = chain_backprop(weights, zs, r * mse_scale(r), layers);
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
                                                const c10::List<std::optional<Tensor>>& biases,
                                                at::IntArrayRef layers) {
  Tensors out = with_node(true, x, y, weights, biases, layers);
  return {out[0], Tensors(out.begin() + 1, out.end())};
}

Tensor chain_loss(const Tensor& x, const Tensor& y, at::TensorList weights,
                  const c10::List<std::optional<Tensor>>& biases, at::IntArrayRef layers) {
  return with_node(false, x, y, weights, biases, layers)[0];
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastmaml, m) {
  // NOTE: [chain maths]. layers[l] = 1 if layer l has a bias, + 2 if a ReLU follows it.
  // The per-task support losses [T] and their gradients w.r.t. the parameters (gradient order);
  // backward: the Hessian-vector product plus the losses' own term.
  m.def("chain_loss_and_grad(Tensor x, Tensor y, Tensor[] weights, Tensor?[] biases, int[] layers)"
        " -> (Tensor losses, Tensor[] grads)");
  // The per-task query losses [T]; backward: their gradients scaled per task.
  m.def("chain_loss(Tensor x, Tensor y, Tensor[] weights, Tensor?[] biases, int[] layers) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastmaml, Autograd, m) {
  m.impl("chain_loss_and_grad", TORCH_FN(chain_loss_and_grad));
  m.impl("chain_loss", TORCH_FN(chain_loss));
}

TORCH_LIBRARY_IMPL(fastmaml, CompositeExplicitAutograd, m) {
  m.impl("chain_loss_and_grad", TORCH_FN(chain_loss_and_grad));
  m.impl("chain_loss", TORCH_FN(chain_loss));
}

}  // namespace fastmaml
