// CUDA kernels of the batched CG's vector algebra (NOTE: [cg ops] in include/fastmaml/cg.h): one
// block per chunk of one task's segment of one tensor (all tensors in one launch, a metadata table
// in device memory), a block reduction to one partial sum per chunk, then one thread per task sums
// its chunks' partials in order (deterministic). fp32 arithmetic for the 16-bit types. Launches on
// the current stream under a device guard, each checked.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <fastmaml/cg.h>

namespace fastmaml {
namespace cg {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per block

// Metadata (int64 words): ptr[k * n_tensors + i] the address of list k's tensor i, then per chunk
// (tensor, offset, len, task), then task_start[T + 1].
template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kThreads)
chunk_kernel(const int64_t* meta, int64_t n_tensors, const at::opmath_type<scalar_t>* coef,
             at::opmath_type<scalar_t> c0, at::opmath_type<scalar_t> c1,
             at::acc_type<scalar_t, true>* partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  using acc_t = at::acc_type<scalar_t, true>;
  constexpr int kIn = Op::kIn, kOut = Op::kOut;
  const int64_t* chunk = meta + Op::kIn * n_tensors + 4 * static_cast<int64_t>(blockIdx.x);
  const int64_t tensor = chunk[0], offset = chunk[1], len = chunk[2], task = chunk[3];
  const scalar_t* x_ptr[kIn];
  for (int k = 0; k < kIn; ++k)
    x_ptr[k] = reinterpret_cast<const scalar_t*>(meta[k * n_tensors + tensor]) + offset;
  const opmath_t a = coef != nullptr ? coef[task] : c0;
  const Op op;
  acc_t acc = 0;
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    std::array<opmath_t, kIn> x;
#pragma unroll
    for (int k = 0; k < kIn; ++k) x[k] = static_cast<opmath_t>(x_ptr[k][j]);
    std::array<opmath_t, kOut> y;
    const opmath_t term = op(x, a, c1, y);
    if constexpr (Op::kReduce) acc += static_cast<acc_t>(term);
#pragma unroll
    for (int k = 0; k < kOut; ++k)
      const_cast<scalar_t*>(x_ptr[k])[j] = static_cast<scalar_t>(y[k]);
  }
  if constexpr (Op::kReduce) {
    __shared__ acc_t shared[kThreads];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
  }
}

// out[t] = sum of the partials of task t's chunks, in chunk order.
template <typename acc_t, typename opmath_t>
__global__ void task_sum_kernel(const int64_t* task_start, int64_t T, const acc_t* partial, opmath_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  double total = 0;
  for (int64_t c = task_start[t]; c < task_start[t + 1]; ++c) total += static_cast<double>(partial[c]);
  out[t] = static_cast<opmath_t>(total);
}

struct Cuda {
  static constexpr at::DeviceType kType = at::kCUDA;

  template <typename Op>
  static at::Tensor run(const std::vector<std::vector<at::Tensor>>& lists, int64_t T, const at::Tensor& coef,
                        double c0, double c1) {
    const std::vector<at::Tensor>& first = lists[0];
    const at::ScalarType dtype = first[0].scalar_type();
    const c10::cuda::CUDAGuard guard(first[0].device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor out = Op::kReduce ? at::zeros({T}, first[0].options().dtype(opmath_type(dtype))) : at::Tensor();
    std::vector<int64_t> task_start;
    const std::vector<Chunk> chunks = make_chunks(first, T, kChunk, task_start);
    if (chunks.empty()) return out;
    const int64_t n = static_cast<int64_t>(first.size());
    const int64_t words = Op::kIn * n + 4 * static_cast<int64_t>(chunks.size()) + T + 1;
    at::Tensor host = at::empty({words}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* w = host.mutable_data_ptr<int64_t>();
    for (int k = 0; k < Op::kIn; ++k)
      for (int64_t i = 0; i < n; ++i)
        w[k * n + i] = reinterpret_cast<int64_t>(lists[k][i].data_ptr());
    int64_t* cw = w + Op::kIn * n;
    for (const Chunk& ch : chunks) {
      *cw++ = ch.tensor;
      *cw++ = ch.offset;
      *cw++ = ch.len;
      *cw++ = ch.task;
    }
    for (int64_t t = 0; t <= T; ++t) *cw++ = task_start[t];
    at::Tensor meta = host.to(first[0].device(), /*non_blocking=*/true);
    const int64_t* meta_ptr = meta.const_data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastmaml_cg_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      using acc_t = at::acc_type<scalar_t, true>;
      at::Tensor partial = at::empty({static_cast<int64_t>(chunks.size())},
                                     first[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      const opmath_t* coef_ptr = coef.defined() ? coef.const_data_ptr<opmath_t>() : nullptr;
      chunk_kernel<scalar_t, Op><<<static_cast<unsigned>(chunks.size()), kThreads, 0, stream>>>(
          meta_ptr, n, coef_ptr, static_cast<opmath_t>(c0), static_cast<opmath_t>(c1),
          partial.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if constexpr (Op::kReduce) {
        const int threads = 128;
        const unsigned blocks = static_cast<unsigned>((T + threads - 1) / threads);
        task_sum_kernel<acc_t, opmath_t><<<blocks, threads, 0, stream>>>(
            meta_ptr + Op::kIn * n + 4 * static_cast<int64_t>(chunks.size()), T,
            partial.const_data_ptr<acc_t>(), out.mutable_data_ptr<opmath_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    return out;
  }
};

}  // namespace
}  // namespace cg

TORCH_LIBRARY_IMPL(fastmaml, CUDA, m) {
  FASTMAML_REGISTER_CG_OPS(m, cg::Cuda);
}

}  // namespace fastmaml
