// The operators' host wrappers, the same for every device: check the arguments, allocate the
// outputs, prepare the operands (NOTE: [operand periods]) and hand them to Device::launch, the
// device's multi-tensor kernel. Device also names its at::DeviceType as kType.
#pragma once

#include <ATen/ATen.h>

#include <fastmaml/operands.h>
#include <fastmaml/update.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fastmaml {

template <typename Device>
struct UpdateOps {
  using List = std::optional<at::TensorList>;

  static std::vector<at::Tensor> fused_update(at::TensorList params, at::TensorList grads, List lrs,
                                              List gammas, double alpha) {
    check_update("fused_update", Device::kType, params, grads, lrs, gammas);
    std::vector<at::Tensor> out = empty_like_all(params);
    Device::launch(params, prepare({params, grads, lrs, gammas}, params), {out}, alpha, ForwardOp{});
    return out;
  }

  static void fused_update_(at::TensorList params, at::TensorList grads, List lrs, List gammas,
                            double alpha) {
    check_update("fused_update_", Device::kType, params, grads, lrs, gammas);
    std::vector<at::Tensor> dst;  // params, or a contiguous copy written back below
    dst.reserve(params.size());
    for (const auto& p : params) dst.push_back(p.contiguous());
    Device::launch(params, prepare({dst, grads, lrs, gammas}, params), {dst}, alpha, ForwardOp{});
    for (size_t i = 0; i < params.size(); ++i)
      if (!dst[i].is_same(params[i])) params[i].copy_(dst[i]);
  }

  static std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<at::Tensor>>
  fused_update_backward(at::TensorList grad_outputs, at::TensorList params, at::TensorList grads,
                        List lrs, List gammas, double alpha, std::array<bool, 4> mask) {
    const char* op = "fused_update_backward";
    check_update(op, Device::kType, params, grads, lrs, gammas);
    check_list(op, "grad_outputs", grad_outputs, params, false);
    TORCH_CHECK(!mask[2] || lrs, op, ": the gradient of lrs was requested but lrs is None");
    TORCH_CHECK(!mask[3] || gammas, op, ": the gradient of gammas was requested but gammas is None");
    std::vector<std::vector<at::Tensor>> outs(4);
    for (int k = 0; k < 4; ++k)
      if (mask[k]) outs[k] = empty_like_all(params);
    // p is read only for d gammas, g only for d lrs.
    Operands in = prepare({grad_outputs, mask[3] ? List(params) : std::nullopt,
                           mask[2] ? List(grads) : std::nullopt, lrs, gammas},
                          params);
    Device::launch(params, in, outs, -alpha, BackwardOp{});
    return {outs[0], outs[1], outs[2], outs[3]};
  }
};

}  // namespace fastmaml

// TORCH_LIBRARY_IMPL(fastmaml, <key>, m) body for a Device.
#define FASTMAML_REGISTER_UPDATE_OPS(m, Device)                                              \
  m.impl("fused_update", &::fastmaml::UpdateOps<Device>::fused_update);                    \
  m.impl("fused_update_", &::fastmaml::UpdateOps<Device>::fused_update_);                  \
  m.impl("fused_update_backward", &::fastmaml::UpdateOps<Device>::fused_update_backward)
