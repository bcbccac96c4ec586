// The autograd formula of fastmaml::fused_update, for every device (the Autograd alias key): a C++
// node like those of ATen's own ops, with none of the per-call cost of a Python autograd.Function.
//
// NOTE: [update autograd]
// out = gamma * p - alpha * (a * g)  (NOTE: [update forms] in include/fastmaml/update.h), so
//   d p = gamma * go,  d g = -alpha * a * go,  d a = -alpha * g * go,  d gamma = p * go,
// d a and d gamma summed to the shapes of a and gamma. The node saves only what the wanted gradients
// read (gamma for d p, a for d g, g for d a, p for d gamma): g, the inner gradient, is not kept alive
// when d a is not wanted. Its backward is
//   - plain (grad mode off, no torch.func transform): one fused_update_backward pass, except that d a
//     or d gamma of a list of scalars (per-layer rates or forget factors) are dot products, with no
//     params-sized temporary to sum;
//   - differentiable otherwise (create_graph=True, that is second-order MAML, and any torch.func
//     transform, where fused_update_backward has neither an autograd formula nor a vmap rule):
//     per-tensor ATen ops, each with its own derivative and batching rule.
// The node composes with torch.func (grad, vmap, vmap(grad), grad(vmap)) as ATen's nodes do: the
// kernel redispatches below Autograd, functorch's DynamicLayerBackMode hands the op to the next
// transform, and each grad level records its own node on its own wrappers. The Triton family keeps
// the Python equivalent in fastmaml/ops/_autograd.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <fastmaml/node.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

namespace fastmaml {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using List = std::optional<at::TensorList>;
using Lists = std::vector<at::Tensor>;

enum Slot { kP, kG, kA, kGamma };  // the input lists, and the gradients, in the schema's order

auto& update_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastmaml::fused_update", "")
                       .typed<Lists(at::TensorList, at::TensorList, List, List, double)>();
  return op;
}

auto& backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastmaml::fused_update_backward", "")
                       .typed<std::tuple<Lists, Lists, Lists, Lists>(
                           at::TensorList, at::TensorList, at::TensorList, List, List, double,
                           std::array<bool, 4>)>();
  return op;
}

// d a or d gamma of a list of scalar operands (per-layer rates or forget factors) as one dot
// product each, x . go (float and double: BLAS), with no params-sized temporary to sum. Only when
// every operand of the list is a scalar: otherwise the kernel computes the params-shaped gradients
// of the whole list anyway, and summing those is cheaper than dots on top.
bool all_by_dot(const Lists& operands) {
  return !operands.empty() && std::all_of(operands.begin(), operands.end(), [](const at::Tensor& t) {
    const auto dtype = t.scalar_type();
    return t.sym_numel() == 1 && (dtype == at::kFloat || dtype == at::kDouble);
  });
}

// (view, not reshape, where it can: one dispatched op instead of two)
at::Tensor flat(const at::Tensor& t) {
  return t.dim() == 1 ? t : t.is_contiguous() ? t.view(-1) : t.reshape(-1);
}

// scale * (x . go), shaped like `operand` (a scalar of any number of dims).
at::Tensor dot(const at::Tensor& x, const at::Tensor& go, const at::Tensor& operand, double scale) {
  at::Tensor d = at::dot(flat(x), flat(go));
  if (scale != 1) d.mul_(scale);
  return operand.dim() == 0 ? d : d.view_symint(operand.sym_sizes());
}

// Whether a torch.func transform is active: functorch includes its front-mode key while its layer
// stack is not empty (<ATen/functorch/DynamicLayer.h> needs headers torch does not ship).
bool in_functorch_transform() {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

struct FusedUpdateBackward final : torch::autograd::Node {
  size_t n = 0;
  bool has[4] = {true, true, false, false};  // lists passed (p and g always)
  double alpha = 0;
  std::vector<SavedVariable> saved[4];  // by Slot; empty unless a wanted gradient reads it

  std::string name() const override { return "FusedUpdateBackward"; }

  // mutex_: as ATen's nodes, the saved variables are not unpacked and released concurrently.
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& list : saved)
      for (auto& s : list) s.reset_data();  // unpacking then raises "backward a second time"
  }

  // First edge of input list k (the next edges are the lists passed, in order).
  size_t offset(int k) const { return k == kGamma && !has[kA] ? 2 * n : k * n; }

  Lists unpack(int k) const {
    Lists out;
    out.reserve(saved[k].size());
    for (const auto& s : saved[k]) out.push_back(s.unpack());
    return out;
  }

  variable_list apply(variable_list&& gos) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < n; ++i)  // the gradient of an output that was not used is undefined
      if (!gos[i].defined()) gos[i] = input_metadata(i).zeros_like();
    std::array<bool, 4> need{};
    for (int k = 0; k < 4; ++k)
      for (size_t i = 0; has[k] && i < n && !need[k]; ++i)
        need[k] = task_should_compute_output(offset(k) + i);
    const Lists p = unpack(kP), g = unpack(kG), a = unpack(kA), gam = unpack(kGamma);
    std::array<Lists, 4> d;
    if (at::GradMode::is_enabled() || in_functorch_transform())
      differentiable(gos, p, g, a, gam, need, d);
    else
      fused(gos, p, g, a, gam, need, d);
    variable_list out(num_outputs());
    for (int k = 0; k < 4; ++k)
      for (size_t i = 0; !d[k].empty() && i < n; ++i)
        if (task_should_compute_output(offset(k) + i)) out[offset(k) + i] = std::move(d[k][i]);
    return out;
  }

  void differentiable(const variable_list& gos, const Lists& p, const Lists& g, const Lists& a,
                      const Lists& gam, const std::array<bool, 4>& need,
                      std::array<Lists, 4>& d) const {
    for (int k = 0; k < 4; ++k)
      if (need[k]) d[k].reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& go = gos[i];
      if (need[kP]) d[kP].push_back(has[kGamma] ? gam[i] * go : go);
      if (need[kG]) d[kG].push_back((has[kA] ? a[i] * go : go) * -alpha);
      if (need[kA]) d[kA].push_back(at::sum_to((g[i] * go) * -alpha, a[i].sym_sizes()));
      if (need[kGamma]) d[kGamma].push_back(at::sum_to(p[i] * go, gam[i].sym_sizes()));
    }
  }

  void fused(const variable_list& gos, const Lists& p, const Lists& g, const Lists& a,
             const Lists& gam, const std::array<bool, 4>& need, std::array<Lists, 4>& d) const {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool dot_a = need[kA] && all_by_dot(a), dot_gamma = need[kGamma] && all_by_dot(gam);
    // The kernel reads p only for d gamma and g only for d a: other lists stand in for them (shapes).
    const std::array<bool, 4> mask = {need[kP] && has[kGamma], need[kG], need[kA] && !dot_a,
                                      need[kGamma] && !dot_gamma};
    if (mask[0] || mask[1] || mask[2] || mask[3])
      std::tie(d[kP], d[kG], d[kA], d[kGamma]) = backward_op().call(
          gos, p.empty() ? gos : p, g.empty() ? gos : g, a.empty() ? List() : List(a),
          gam.empty() ? List() : List(gam), alpha, mask);
    if (need[kP] && !has[kGamma]) d[kP] = gos;  // d out / d p = 1
    // d a, d gamma: dot products for a list of scalars, else the kernel's params-shaped gradients
    // summed to each operand's shape.
    auto reduce = [&](int k, bool by_dot, const Lists& x, const Lists& operand, double scale) {
      if (!need[k]) return;
      d[k].resize(n);
      for (size_t i = 0; i < n; ++i) {
        if (by_dot)
          d[k][i] = dot(x[i], gos[i], operand[i], scale);
        else if (d[k][i].sym_sizes() != operand[i].sym_sizes())
          d[k][i] = at::sum_to(d[k][i], operand[i].sym_sizes());
      }
    };
    reduce(kA, dot_a, g, a, -alpha);
    reduce(kGamma, dot_gamma, p, gam, 1);
  }
};

Lists fused_update_autograd(c10::DispatchKeySet ks, at::TensorList params, at::TensorList grads,
                            List lrs, List gammas, double alpha) {
  const std::array<const at::TensorList*, 4> lists = {&params, &grads, lrs ? &*lrs : nullptr,
                                                      gammas ? &*gammas : nullptr};
  Lists flat;  // the lists passed, in order: the node's next edges
  for (const auto* list : lists)
    if (list) flat.insert(flat.end(), list->begin(), list->end());
  for (const auto& t : flat)
    TORCH_CHECK(!torch::autograd::isFwGradDefined(t),
                "fastmaml::fused_update: forward-mode AD (jvp) is not supported");
  NodeHandle<FusedUpdateBackward> node;
  if (torch::autograd::compute_requires_grad(flat)) {
    node = make_node<FusedUpdateBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(flat));
    node->n = params.size();
    node->alpha = alpha;
    node->has[kA] = lrs.has_value();
    node->has[kGamma] = gammas.has_value();
    std::array<bool, 4> want{};
    for (int k = 0; k < 4; ++k)
      for (size_t i = 0; lists[k] && i < node->n && !want[k]; ++i)
        want[k] = node->should_compute_output(node->offset(k) + i);
    // What each wanted gradient reads (NOTE: [update autograd]); a and gamma also for their shapes.
    const std::array<bool, 4> save = {want[kGamma], want[kA], want[kG] || want[kA],
                                      want[kP] || want[kGamma]};
    for (int k = 0; k < 4; ++k) {
      if (!lists[k] || !save[k]) continue;
      node->saved[k].reserve(node->n);
      for (const auto& t : *lists[k]) node->saved[k].emplace_back(t, /*is_output=*/false);
    }
  }
  Lists out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = update_op().redispatch(ks & c10::after_autograd_keyset, params, grads, lrs, gammas, alpha);
  }
  if (node) torch::autograd::set_history(out, node);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmaml, Autograd, m) {
  m.impl("fused_update", TORCH_FN(fused_update_autograd));
}

}  // namespace fastmaml
