// Multi-tensor apply (after apex csrc/multi_tensor_apply.cuh and ATen's MultiTensorApply.cuh): ONE
// launch covers all tensors of a list, whatever their count and size. Every tensor is cut into
// chunks of kChunkSize elements, one block per chunk. The launch's table (each tensor's addresses,
// size and operand periods, then each block's tensor and chunk) is written to pinned host memory
// and copied to the device on the current stream (one asynchronous copy, no kernel): ATen's kernel
// argument metadata (4 KB) would cut a long list or a big tensor into several launches. The launch
// is checked.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <fastmaml/operands.h>

#include <cstring>
#include <limits>
#include <vector>

namespace fastmaml {
namespace cuda {

constexpr int kBlockSize = 512;
constexpr int64_t kChunkSize = 65536;

struct BlockEntry {
  int tensor;  // index into jobs
  int chunk;   // the block covers elements [chunk * kChunkSize, (chunk + 1) * kChunkSize)
};

// The kernel's view of the table, in device memory.
template <typename scalar_t, int kIn, int kOut>
struct TensorListMeta {
  const Job<scalar_t, kIn, kOut>* jobs;
  const BlockEntry* blocks;
};

template <typename Meta, typename Functor, typename... Args>
__global__ void __launch_bounds__(kBlockSize) multi_tensor_kernel(Meta meta, Functor functor, Args... args) {
  functor(meta, args...);
}

template <typename scalar_t, int kIn, int kOut, typename Functor, typename... Args>
void multi_tensor_apply(const std::vector<Job<scalar_t, kIn, kOut>>& jobs, at::Device device,
                        Functor functor, Args... args) {
  using JobT = Job<scalar_t, kIn, kOut>;
  static_assert(std::is_trivially_copyable_v<JobT> && sizeof(JobT) % alignof(BlockEntry) == 0);
  if (jobs.empty()) return;
  std::vector<BlockEntry> blocks;
  for (size_t t = 0; t < jobs.size(); ++t) {
    const int64_t chunks = (jobs[t].n + kChunkSize - 1) / kChunkSize;
    TORCH_CHECK(chunks <= std::numeric_limits<int>::max(), "fastmaml: a tensor of ", jobs[t].n,
                " elements is too large for the CUDA update");
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      blocks.push_back({static_cast<int>(t), static_cast<int>(chunk)});
  }
  TORCH_CHECK(blocks.size() <= static_cast<size_t>(std::numeric_limits<int>::max()),
              "fastmaml: too many chunks for one CUDA launch");
  const size_t job_bytes = jobs.size() * sizeof(JobT);
  const size_t bytes = job_bytes + blocks.size() * sizeof(BlockEntry);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.mutable_data_ptr(), jobs.data(), job_bytes);
  std::memcpy(static_cast<char*>(host.mutable_data_ptr()) + job_bytes, blocks.data(), bytes - job_bytes);
  // Asynchronous on the current stream; the host block is recorded so it is not reused too early.
  const at::Tensor table = host.to(device, /*non_blocking=*/true);
  const char* base = static_cast<const char*>(table.const_data_ptr());
  const TensorListMeta<scalar_t, kIn, kOut> meta{reinterpret_cast<const JobT*>(base),
                                                 reinterpret_cast<const BlockEntry*>(base + job_bytes)};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  multi_tensor_kernel<<<static_cast<unsigned>(blocks.size()), kBlockSize, 0, stream>>>(meta, functor, args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fastmaml
