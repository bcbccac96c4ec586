// Multi-tensor apply (after apex csrc/multi_tensor_apply.cuh and ATen's MultiTensorApply.cuh): one
// launch covers many tensors. Every tensor is cut into chunks of kChunkSize elements, one block per
// chunk; the launch's metadata (a kernel argument, under the 4 KB limit) holds each tensor's
// addresses, size and operand periods, and for each block its tensor and chunk. A launch goes out
// when its tensor or block table is full, on the current stream, and is checked.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <fastmaml/operands.h>

#include <vector>

namespace fastmaml {
namespace cuda {

constexpr int kBlockSize = 512;
constexpr int64_t kChunkSize = 65536;
constexpr int kMaxBlocks = 320;

// How many tensors' entries fit in the argument beside the block table.
constexpr int max_tensors(int n_in, int n_out) {
  return (4096 - 256 - kMaxBlocks * 5) / (8 * (2 * n_in + n_out + 1));
}

// Slots: in[k] is operand k (read modulo period[k], NOTE: [operand periods]), out[k] output k;
// a null output is not written.
template <typename scalar_t, int kIn, int kOut>
struct TensorListMeta {
  static constexpr int kMaxTensors = max_tensors(kIn, kOut);
  const scalar_t* in[kIn][kMaxTensors];
  scalar_t* out[kOut][kMaxTensors];
  int64_t period[kIn][kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char block_to_tensor[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};

template <typename Meta, typename Functor, typename... Args>
__global__ void __launch_bounds__(kBlockSize) multi_tensor_kernel(Meta meta, Functor functor, Args... args) {
  functor(meta, args...);
}

template <typename scalar_t, int kIn, int kOut, typename Functor, typename... Args>
void multi_tensor_apply(const std::vector<Job<scalar_t, kIn, kOut>>& jobs, Functor functor,
                        Args... args) {
  using Meta = TensorListMeta<scalar_t, kIn, kOut>;
  static_assert(sizeof(Meta) <= 4000, "kernel argument over the 4 KB limit");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Meta meta;
  auto set_slot = [&](int slot, const Job<scalar_t, kIn, kOut>& job) {
    for (int k = 0; k < kIn; ++k) {
      meta.in[k][slot] = job.in[k];
      meta.period[k][slot] = job.period[k];
    }
    for (int k = 0; k < kOut; ++k) meta.out[k][slot] = job.out[k];
    meta.numel[slot] = job.n;
  };
  int tensors = 0, blocks = 0;
  for (size_t t = 0; t < jobs.size(); ++t) {
    set_slot(tensors++, jobs[t]);
    const int64_t chunks = (jobs[t].n + kChunkSize - 1) / kChunkSize;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      meta.block_to_tensor[blocks] = static_cast<unsigned char>(tensors - 1);
      meta.block_to_chunk[blocks] = static_cast<int>(chunk);
      ++blocks;
      const bool last_chunk = chunk == chunks - 1;
      const bool tensors_full = tensors == Meta::kMaxTensors && last_chunk;
      if (tensors_full || blocks == kMaxBlocks || (t + 1 == jobs.size() && last_chunk)) {
        multi_tensor_kernel<<<blocks, kBlockSize, 0, stream>>>(meta, functor, args...);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        blocks = 0;
        tensors = 0;
        if (!last_chunk) set_slot(tensors++, jobs[t]);  // the tensor goes on in the next launch
      }
    }
  }
}

}  // namespace cuda
}  // namespace fastmaml
