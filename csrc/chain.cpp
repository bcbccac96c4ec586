// The inner gradients of a task-batched Linear/ReLU chain under the mean squared error, and their
// backward, written out: the maths of two ops whose autograd node is in autograd/chain.cpp, called by
// the batched mode (fastmaml/execution/chain.py through fastmaml/ops/chain/). For the small MLPs of sine regression each ATen op costs more in
// dispatch and autograd bookkeeping than in arithmetic: here one op call does a whole support step.
//
// NOTE: [chain maths]
// All tensors task-batched: x [T, N, in], weights W_l [T, out, in], biases b_l [T, out].
//   z_0 = x,   h_l = z_{l-1} W_l^T + b_l,   z_l = relu(h_l) or h_l,   r = z_L - y,
//   losses_t = mean over (n, j) of r^2
//   gradient (backprop from dz_L = c r, c = 2 / (N * out_features)):
//     d_l = dz_l * m_l (m_l = [z_l > 0] after a ReLU, as autograd's relu backward, else 1),
//     gW_l = d_l^T z_{l-1},  gb_l = sum_n d_l,  dz_{l-1} = d_l W_l
//   its VJP u -> H u (hvp; the Hessian is symmetric), by the R-operator
//   R{.} = d/de (.)(P + e u) (Pearlmutter 1994), with R{m_l} = 0 (ReLU is piecewise linear):
//     Rz_0 = 0,  Rh_l = z_{l-1} uW_l^T + ub_l + Rz_{l-1} W_l^T,  Rz_l = Rh_l * m_l,
//     Rdz_L = c Rz_L,  Rd_l = Rdz_l * m_l,  (Hu)W_l = Rd_l^T z_{l-1} + d_l^T Rz_{l-1},
//     (Hu)b_l = sum_n Rd_l,  Rdz_{l-1} = Rd_l W_l + d_l uW_l
// Gradients come in the order of the parameters: per layer its weight, then its bias if it has one.
#include "fastmaml/chain.h"

#include <ATen/ATen.h>

namespace fastmaml::chain {

using at::Tensor;

namespace {

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

}  // namespace

std::tuple<Tensors, Tensor, Tensor> forward(const Tensor& x, const Tensor& y, at::TensorList weights,
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

std::tuple<Tensors, Tensors> backprop(at::TensorList weights, at::TensorList zs, const Tensor& dz_last,
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

Tensors hvp(at::TensorList weights, at::TensorList zs, at::TensorList ds, double c, at::TensorList us,
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

Tensors flatten(at::TensorList weights, const c10::List<std::optional<Tensor>>& biases) {
  Tensors params;
  for (size_t l = 0; l < weights.size(); ++l) {
    params.push_back(weights[l]);
    if (std::optional<Tensor> b = biases.get(l)) params.push_back(*b);
  }
  return params;
}

std::pair<Tensors, Biases> split(const Tensors& params, at::IntArrayRef layers) {
  Tensors weights;
  c10::List<std::optional<Tensor>> biases;
  size_t k = 0;
  for (int64_t flags : layers) {
    weights.push_back(params[k++]);
    biases.push_back(flags & kBias ? std::optional<Tensor>(params[k++]) : std::nullopt);
  }
  return {std::move(weights), std::move(biases)};
}

double mse_scale(const Tensor& r) { return 2.0 / static_cast<double>(r.numel() / r.size(0)); }

Tensors scaled_grads(at::TensorList weights, at::TensorList zs, const Tensor& r, const Tensor& v,
                     at::IntArrayRef layers) {
  return std::get<0>(backprop(weights, zs, r * (v * mse_scale(r)).view({-1, 1, 1}), layers));
}

void check_inputs(const char* op, const Tensor& x, const Tensor& y, at::TensorList weights,
                  const Biases& biases, at::IntArrayRef layers) {
  TORCH_CHECK(!weights.empty(), "fastmaml::", op, ": weights is empty");
  TORCH_CHECK(layers.size() == weights.size(), "fastmaml::", op, ": layers has ", layers.size(),
              " entries but weights has ", weights.size());
  TORCH_CHECK(biases.size() == weights.size(), "fastmaml::", op, ": biases has ", biases.size(),
              " entries but weights has ", weights.size());
  TORCH_CHECK(x.dim() == 3, "fastmaml::", op, ": x must be [tasks, examples, features], got ", x.sizes());
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0, "fastmaml::", op,
              ": x must have at least one task and one example, got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "fastmaml::", op, ": x must be floating point, got ",
              x.scalar_type());
  auto same_kind = [&](const Tensor& t, const char* arg, size_t l) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), "fastmaml::", op, ": ", arg, "[",
                l, "] is ", t.scalar_type(), " on ", t.device(), " but x is ", x.scalar_type(), " on ", x.device());
  };
  const int64_t T = x.size(0);
  int64_t features = x.size(2);
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK(layers[l] >= 0 && layers[l] <= (kBias | kRelu), "fastmaml::", op, ": layers[", l,
                "] must be 0..3 (1 if the layer has a bias, + 2 if a ReLU follows), got ", layers[l]);
    const Tensor& w = weights[l];
    same_kind(w, "weights", l);
    if (const std::optional<Tensor> b = biases.get(l)) same_kind(*b, "biases", l);
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
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && y.device() == x.device(), "fastmaml::", op, ": y is ",
              y.scalar_type(), " on ", y.device(), " but x is ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(!x.requires_grad() && !y.requires_grad(), "fastmaml::", op,
              ": x and y must not require grad (only the parameters are differentiated)");
}

}  // namespace fastmaml::chain
