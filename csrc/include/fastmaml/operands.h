// Host-side checks and preparation of the operand lists, shared by the CPU and CUDA kernels.
//
// NOTE: [operand periods]
// The kernels see every operand of tensor i flat, contiguous, and read modulo a period: element k of
// params[i] reads values[k % period] of each operand (p, g, a = lrs[i], gamma = gammas[i], ...):
//   period 0          absent: reads as the constant 1 (NOTE: [update forms] in update.h)
//   period 1          one scalar (a per-layer rate, shape [] or [1] or [1, 1, ...])
//   period numel(p)   elementwise, the usual case
//   other periods     the operand repeats along p's leading dims: a of shape [64, 3, 3] shared by
//                     the tasks of p [32, 64, 3, 3] (as the vmap rule passes unbatched operands),
//                     an expanded [32, 64, 3, 3] view with stride 0 along the tasks, or a per-channel
//                     [64, 1, 1, 1] whose trailing dims are materialised to [64, 3, 3, 3]
// Only the dims after the leading run of broadcast dims (size 1, or stride 0 once expanded) are
// materialised, so prepared values are never larger than p, and an operand shared by all tasks is
// never copied per task.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ExpandUtils.h>

#include <algorithm>
#include <array>
#include <optional>
#include <utility>
#include <vector>

namespace fastmaml {

struct Periodic {
  at::Tensor values;   // contiguous; undefined when absent
  int64_t period = 0;  // see NOTE: [operand periods]
};

inline Periodic periodic(const at::Tensor& t, at::IntArrayRef shape) {
  if (t.numel() == 1) return {t, 1};
  if (t.sizes() == shape && t.is_contiguous()) return {t, t.numel()};
  at::Tensor rest = t.expand(shape);
  while (rest.dim() > 0 && (rest.size(0) == 1 || rest.stride(0) == 0)) rest = rest.select(0, 0);
  rest = rest.contiguous();
  return {rest, rest.numel()};
}

// Errors name the argument and the index, like the Python dispatcher's (fastmaml/ops/__init__.py):
// the ops may be called directly, e.g. by torch.library.opcheck.
inline void check_params(const char* op, at::TensorList params, at::DeviceType device_type) {
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(at::isFloatingType(params[i].scalar_type()), op, ": params[", i,
                "] must be floating point, got ", params[i].scalar_type());
    TORCH_CHECK(params[i].device() == params[0].device(), op, ": params[", i, "] is on ",
                params[i].device(), " but params[0] is on ", params[0].device());
  }
  if (!params.empty())
    TORCH_CHECK(params[0].device().type() == device_type, op, ": params[0] is on ",
                params[0].device(), ", expected a ", device_type, " tensor");
}

// `broadcast`: each tensor need only broadcast to params[i] (lrs, gammas); otherwise it must have
// params[i]'s shape (grads, grad_outputs).
inline void check_list(const char* op, const char* arg, at::TensorList list, at::TensorList params,
                       bool broadcast) {
  TORCH_CHECK(list.size() == params.size(), op, ": ", arg, " has ", list.size(),
              " tensors but params has ", params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& t = list[i];
    const at::Tensor& p = params[i];
    if (broadcast) {
      TORCH_CHECK(at::is_expandable_to(t.sizes(), p.sizes()), op, ": ", arg, "[", i,
                  "] has shape ", t.sizes(), ", which does not broadcast to params[", i,
                  "] shape ", p.sizes());
    } else {
      TORCH_CHECK(t.sizes() == p.sizes(), op, ": ", arg, "[", i, "] has shape ", t.sizes(),
                  " but params[", i, "] has ", p.sizes());
    }
    TORCH_CHECK(t.scalar_type() == p.scalar_type(), op, ": ", arg, "[", i, "] has dtype ",
                t.scalar_type(), " but params[", i, "] has ", p.scalar_type());
    TORCH_CHECK(t.device() == p.device(), op, ": ", arg, "[", i, "] is on ", t.device(),
                " but params[", i, "] is on ", p.device());
  }
}

inline void check_update(const char* op, at::DeviceType device_type, at::TensorList params,
                         at::TensorList grads, const std::optional<at::TensorList>& lrs,
                         const std::optional<at::TensorList>& gammas) {
  check_params(op, params, device_type);
  check_list(op, "grads", grads, params, false);
  if (lrs) check_list(op, "lrs", *lrs, params, true);
  if (gammas) check_list(op, "gammas", *gammas, params, true);
}

// The operands of a list of tensors ready for a kernel: operands[k][i] is operand k of tensor i.
// An absent list (std::nullopt) has period 0 everywhere.
using Operands = std::vector<std::vector<Periodic>>;

inline Operands prepare(const std::vector<std::optional<at::TensorList>>& lists,
                        at::TensorList params) {
  Operands out(lists.size());
  for (size_t k = 0; k < lists.size(); ++k) {
    out[k].reserve(params.size());
    for (size_t i = 0; i < params.size(); ++i)
      out[k].push_back(lists[k] ? periodic((*lists[k])[i], params[i].sizes()) : Periodic{});
  }
  return out;
}

// Fresh contiguous tensors shaped like params. On the CPU straight from the allocator: at::empty_like
// goes through the dispatcher, about 1 us a tensor, as much as the whole update of a small tensor.
inline std::vector<at::Tensor> empty_like_all(at::TensorList params) {
  std::vector<at::Tensor> out;
  out.reserve(params.size());
  for (const auto& p : params) {
    if (p.device().is_cpu())
      out.emplace_back(at::detail::empty_cpu(p.sizes(), p.scalar_type(), /*pin_memory=*/false,
                                             at::MemoryFormat::Contiguous));
    else
      out.push_back(at::empty_like(p, at::MemoryFormat::Contiguous));
  }
  return out;
}

// One tensor's work for a kernel: kIn operands read modulo their periods, kOut outputs written,
// all with n elements. A null output is not written.
template <typename scalar_t, int kIn, int kOut>
struct Job {
  std::array<const scalar_t*, kIn> in;
  std::array<int64_t, kIn> period;  // NOTE: [operand periods]
  std::array<scalar_t*, kOut> out;
  int64_t n;
};

// The jobs of the non-empty tensors `indices` (all of one dtype); `outs` holds kOut lists, an empty
// list where that output is not written.
template <typename scalar_t, int kIn, int kOut>
std::vector<Job<scalar_t, kIn, kOut>> make_jobs(at::TensorList params, const Operands& in,
                                                const std::vector<std::vector<at::Tensor>>& outs,
                                                const std::vector<size_t>& indices) {
  TORCH_INTERNAL_ASSERT(in.size() == kIn && outs.size() == kOut);
  std::vector<Job<scalar_t, kIn, kOut>> jobs;
  jobs.reserve(indices.size());
  for (size_t i : indices) {
    if (params[i].numel() == 0) continue;
    Job<scalar_t, kIn, kOut> job;
    for (int k = 0; k < kIn; ++k) {
      const Periodic& operand = in[k][i];
      job.in[k] = operand.period ? operand.values.const_data_ptr<scalar_t>() : nullptr;
      job.period[k] = operand.period;
    }
    for (int k = 0; k < kOut; ++k)
      job.out[k] = outs[k].empty() ? nullptr : outs[k][i].mutable_data_ptr<scalar_t>();
    job.n = params[i].numel();
    jobs.push_back(job);
  }
  return jobs;
}

// Indices of params grouped by dtype: each group is one typed kernel call.
inline std::vector<std::pair<at::ScalarType, std::vector<size_t>>> group_by_dtype(
    at::TensorList params) {
  std::vector<std::pair<at::ScalarType, std::vector<size_t>>> groups;
  for (size_t i = 0; i < params.size(); ++i) {
    auto dtype = params[i].scalar_type();
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& grp) { return grp.first == dtype; });
    if (it == groups.end()) groups.push_back({dtype, {i}});
    else it->second.push_back(i);
  }
  return groups;
}

}  // namespace fastmaml
