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
  // NOTE: [moment forms] in update.h. Returns (p' or d, m', v', b'), a list empty where its state
  // is absent.
  static std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<at::Tensor>>
  fused_moments(at::TensorList params, at::TensorList grads, List lrs, List m, List v, List b,
                double alpha, at::ArrayRef<double> hyper, int64_t flags) {
    const char* op = "fused_moments";
    MomentsForwardOp f{moment_hyper(op, params, grads, lrs, m, v, b, hyper, flags)};
    std::vector<std::vector<at::Tensor>> outs(4);
    outs[0] = empty_like_all(params);
    for (int k = 1; k < 4; ++k)
      if (std::array<List, 3>{m, v, b}[k - 1]) outs[k] = empty_like_all(params);
    Device::launch(params, prepare({params, grads, lrs, m, v, b}, params), outs, alpha, f);
    return {outs[0], outs[1], outs[2], outs[3]};
  }

  // The gradients (d params, d grads, d lrs, d m, d v, d b) selected by output_mask, from the
  // gradients of the four outputs (a list absent where that output was not used). d lrs comes with
  // params' shapes: the caller reduces it to the shapes of lrs.
  static std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
  fused_moments_backward(List grad_out, List grad_m, List grad_v, List grad_b, at::TensorList params,
                         at::TensorList grads, List lrs, List m, List v, List b, double alpha,
                         at::ArrayRef<double> hyper, int64_t flags, std::array<bool, 6> mask) {
    const char* op = "fused_moments_backward";
    MomentsBackwardOp f{moment_hyper(op, params, grads, lrs, m, v, b, hyper, flags)};
    const std::array<List, 4> gos = {grad_out, grad_m, grad_v, grad_b};
    const char* names[4] = {"grad_out", "grad_m", "grad_v", "grad_b"};
    const int has[4] = {MomentsBackwardOp::kHasGo, MomentsBackwardOp::kHasGm,
                        MomentsBackwardOp::kHasGv, MomentsBackwardOp::kHasGb};
    for (int k = 0; k < 4; ++k) {
      if (!gos[k]) continue;
      check_list(op, names[k], *gos[k], params, false);
      f.h.flags |= has[k];
    }
    const std::array<List, 6> ins = {List(params), List(grads), lrs, m, v, b};
    const char* in_names[6] = {"params", "grads", "lrs", "m", "v", "b"};
    std::vector<std::vector<at::Tensor>> outs(6);
    for (int k = 0; k < 6; ++k) {
      if (!mask[k]) continue;
      TORCH_CHECK(ins[k], op, ": the gradient of ", in_names[k], " was requested but ", in_names[k],
                  " is None");
      outs[k] = empty_like_all(params);
    }
    Device::launch(params, prepare({grad_out, grad_m, grad_v, grad_b, params, grads, lrs, m, v, b}, params),
                   outs, alpha, f);
    return {outs[0], outs[1], outs[2], outs[3], outs[4], outs[5]};
  }

 private:
  static MomentHyper moment_hyper(const char* op, at::TensorList params, at::TensorList grads, List lrs,
                                  List m, List v, List b, at::ArrayRef<double> hyper, int64_t flags) {
    check_update(op, Device::kType, params, grads, lrs, std::nullopt);
    const std::array<List, 3> lists = {m, v, b};
    const char* names[3] = {"m", "v", "b"};
    const int has[3] = {MomentHyper::kHasM, MomentHyper::kHasV, MomentHyper::kHasB};
    TORCH_CHECK(static_cast<int>(hyper.size()) == MomentHyper::kNumHyper, op, ": hyper must have ",
                MomentHyper::kNumHyper, " values (NOTE: [moment forms]), got ", hyper.size());
    TORCH_CHECK(flags >= 0 && flags < MomentHyper::kUserFlags, op, ": flags must be a combination of 1 "
                "(adam), 2 (centered), 4 (nesterov) and 8 (direction), got ", flags);
    MomentHyper h;
    double* fields[MomentHyper::kNumHyper] = {&h.wd, &h.b1,     &h.c1,  &h.b2, &h.c2, &h.s1,  &h.s2,
                                              &h.eps_in, &h.eps, &h.mu, &h.c,  &h.keep, &h.dd};
    for (int k = 0; k < MomentHyper::kNumHyper; ++k) *fields[k] = hyper[k];
    h.flags = static_cast<int>(flags);
    for (int k = 0; k < 3; ++k) {
      if (!lists[k]) continue;
      check_list(op, names[k], *lists[k], params, false);
      h.flags |= has[k];
    }
    TORCH_CHECK(!(h.flags & MomentHyper::kAdam) || m, op, ": the adam form needs m");
    TORCH_CHECK(!(h.flags & MomentHyper::kCentered) || (m && v), op, ": the centered form needs m and v");
    TORCH_CHECK(!(h.flags & MomentHyper::kNesterov) || b, op, ": nesterov needs b");
    return h;
  }
};

}  // namespace fastmaml

// TORCH_LIBRARY_IMPL(fastmaml, <key>, m) body for a Device.
#define FASTMAML_REGISTER_UPDATE_OPS(m, Device)                                              \
  m.impl("fused_update", &::fastmaml::UpdateOps<Device>::fused_update);                    \
  m.impl("fused_update_", &::fastmaml::UpdateOps<Device>::fused_update_);                  \
  m.impl("fused_update_backward", &::fastmaml::UpdateOps<Device>::fused_update_backward);    \
  m.impl("fused_moments", &::fastmaml::UpdateOps<Device>::fused_moments);                  \
  m.impl("fused_moments_backward", &::fastmaml::UpdateOps<Device>::fused_moments_backward)
