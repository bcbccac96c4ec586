// CUDA kernels of the fused update: multi-tensor apply over the whole list (one launch per dtype
// present), fp32 arithmetic for the 16-bit types, aligned vector
// loads where every operand is scalar or elementwise. Maths: include/fastmaml/update.h; operand
// layout: include/fastmaml/operands.h; the operators' wrappers: include/fastmaml/update_ops.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <fastmaml/update_ops.h>

#include "multi_tensor_apply.cuh"

namespace fastmaml {
namespace cuda {
namespace {

constexpr int kILP = 4;  // elements per thread per step: one aligned vector load per operand

template <typename T>
struct alignas(sizeof(T) * kILP) Vec {
  T v[kILP];
};

template <typename T>
__device__ bool is_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Vec<T>) == 0;
}

template <typename scalar_t, typename Op>
struct ElementwiseFunctor {
  static constexpr int kIn = Op::kIn, kOut = Op::kOut;
  using opmath_t = at::opmath_type<scalar_t>;
  Op op;  // the form's settings (NOTE: [moment forms]); empty for the plain update

  __device__ void operator()(TensorListMeta<scalar_t, kIn, kOut>& meta, opmath_t c) const {
    const BlockEntry block = meta.blocks[blockIdx.x];
    const Job<scalar_t, kIn, kOut>& job = meta.jobs[block.tensor];
    const int64_t n = job.n;
    const int64_t begin = static_cast<int64_t>(block.chunk) * kChunkSize;
    const int64_t end = min(n, begin + kChunkSize);

    const scalar_t* in[kIn];
    int64_t period[kIn];
    opmath_t scalar[kIn];  // the value of an operand that is absent (1) or one scalar
    bool vectorized = true;
    for (int k = 0; k < kIn; ++k) {
      in[k] = job.in[k];
      period[k] = job.period[k];
      scalar[k] = period[k] == 1 ? static_cast<opmath_t>(in[k][0]) : opmath_t(1);
      if (period[k] > 1) vectorized = vectorized && period[k] == n && is_aligned(in[k]);
    }
    scalar_t* out[kOut];
    for (int k = 0; k < kOut; ++k) {
      out[k] = job.out[k];
      if (out[k] != nullptr) vectorized = vectorized && is_aligned(out[k]);
    }

    std::array<opmath_t, kIn> x;
    std::array<opmath_t, kOut> y;
    if (vectorized) {
      // begin is a multiple of kChunkSize, so every full step is aligned.
      for (int64_t i = begin + threadIdx.x * kILP; i < end; i += blockDim.x * kILP) {
        if (i + kILP <= end) {
          Vec<scalar_t> r_in[kIn], r_out[kOut];
          for (int k = 0; k < kIn; ++k)
            if (period[k] > 1) r_in[k] = *reinterpret_cast<const Vec<scalar_t>*>(in[k] + i);
#pragma unroll
          for (int e = 0; e < kILP; ++e) {
            for (int k = 0; k < kIn; ++k)
              x[k] = period[k] > 1 ? static_cast<opmath_t>(r_in[k].v[e]) : scalar[k];
            op(x, c, y);
            for (int k = 0; k < kOut; ++k) r_out[k].v[e] = static_cast<scalar_t>(y[k]);
          }
          for (int k = 0; k < kOut; ++k)
            if (out[k] != nullptr) *reinterpret_cast<Vec<scalar_t>*>(out[k] + i) = r_out[k];
        } else {
          for (int64_t j = i; j < end; ++j) {
            for (int k = 0; k < kIn; ++k)
              x[k] = period[k] > 1 ? static_cast<opmath_t>(in[k][j]) : scalar[k];
            op(x, c, y);
            for (int k = 0; k < kOut; ++k)
              if (out[k] != nullptr) out[k][j] = static_cast<scalar_t>(y[k]);
          }
        }
      }
    } else {
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        for (int k = 0; k < kIn; ++k)
          x[k] = period[k] > 1 ? static_cast<opmath_t>(in[k][i % period[k]]) : scalar[k];
        op(x, c, y);
        for (int k = 0; k < kOut; ++k)
          if (out[k] != nullptr) out[k][i] = static_cast<scalar_t>(y[k]);
      }
    }
  }
};

struct Cuda {
  static constexpr at::DeviceType kType = at::kCUDA;

  template <typename Op>
  static void launch(at::TensorList params, const Operands& in,
                     const std::vector<std::vector<at::Tensor>>& outs, double c, const Op& op) {
    if (params.empty()) return;
    const c10::cuda::CUDAGuard guard(params[0].device());
    for (const auto& [dtype, indices] : group_by_dtype(params)) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastmaml_update_cuda", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        multi_tensor_apply(make_jobs<scalar_t, Op::kIn, Op::kOut>(params, in, outs, indices), params[0].device(),
                           ElementwiseFunctor<scalar_t, Op>{op}, static_cast<opmath_t>(c));
      });
    }
  }
};

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastmaml, CUDA, m) {
  FASTMAML_REGISTER_UPDATE_OPS(m, cuda::Cuda);
}

}  // namespace fastmaml
