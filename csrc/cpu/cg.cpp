// CPU kernels of the batched CG's vector algebra (NOTE: [cg ops] in include/fastmaml/cg.h): one
// at::parallel_for over fixed-size chunks of every task's segment of every tensor, vectorised with
// at::vec (fp32 arithmetic for the 16-bit types); per-chunk partial sums reduced per task in chunk
// order, so the results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <fastmaml/cg.h>

namespace fastmaml {
namespace cg {
namespace {

constexpr int64_t kChunk = 4096;             // elements per chunk (and per partial sum)
constexpr int64_t kGrainChunks = 32768 / kChunk;  // below this many chunks a call runs on one thread

// Loads and stores of scalar_t as opmath vectors: one Vectorized<float|double>, or two
// Vectorized<float> per Vectorized<Half|BFloat16>.
template <typename scalar_t, typename = void>
struct Lanes {
  using V = at::vec::Vectorized<scalar_t>;
  using Pack = std::array<V, 1>;
  static constexpr int64_t kWidth = V::size();
  static Pack load(const scalar_t* p) { return {V::loadu(p)}; }
  static void store(scalar_t* p, const Pack& v) { v[0].store(p); }
};

template <typename scalar_t>
struct Lanes<scalar_t, std::enable_if_t<c10::is_reduced_floating_point_v<scalar_t>>> {
  using V = at::vec::Vectorized<float>;
  using Pack = std::array<V, 2>;
  static constexpr int64_t kWidth = at::vec::Vectorized<scalar_t>::size();
  static Pack load(const scalar_t* p) {
    auto [lo, hi] = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(p));
    return {lo, hi};
  }
  static void store(scalar_t* p, const Pack& v) {
    at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p);
  }
};

// Op over len elements: x[k] inputs, y[k] outputs (may alias inputs); returns the sum of the terms.
template <typename scalar_t, typename Op>
double run_chunk(const std::array<const scalar_t*, Op::kIn>& x_ptr,
                 const std::array<scalar_t*, Op::kOut>& y_ptr, int64_t len,
                 at::opmath_type<scalar_t> c0, at::opmath_type<scalar_t> c1) {
  using opmath_t = at::opmath_type<scalar_t>;
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  using Pack = typename L::Pack;
  constexpr int kIn = Op::kIn, kOut = Op::kOut;
  const Op op;
  V acc(opmath_t(0));
  const V c0_v(c0), c1_v(c1);
  int64_t j = 0;
  for (; j + L::kWidth <= len; j += L::kWidth) {
    std::array<Pack, kIn> x;
    for (int k = 0; k < kIn; ++k) x[k] = L::load(x_ptr[k] + j);
    std::array<Pack, kOut> y;
    for (size_t part = 0; part < std::tuple_size_v<Pack>; ++part) {
      std::array<V, kIn> xp;
      std::array<V, kOut> yp;
      for (int k = 0; k < kIn; ++k) xp[k] = x[k][part];
      const V term = op(xp, c0_v, c1_v, yp);
      if constexpr (Op::kReduce) acc = acc + term;
      for (int k = 0; k < kOut; ++k) y[k][part] = yp[k];
    }
    for (int k = 0; k < kOut; ++k) L::store(y_ptr[k] + j, y[k]);
  }
  double total = 0;
  if constexpr (Op::kReduce) {
    std::array<opmath_t, V::size()> lanes;
    acc.store(lanes.data());
    for (auto v : lanes) total += static_cast<double>(v);
  }
  for (; j < len; ++j) {
    std::array<opmath_t, kIn> x;
    for (int k = 0; k < kIn; ++k) x[k] = static_cast<opmath_t>(x_ptr[k][j]);
    std::array<opmath_t, kOut> y;
    const opmath_t term = op(x, c0, c1, y);
    if constexpr (Op::kReduce) total += static_cast<double>(term);
    for (int k = 0; k < kOut; ++k) y_ptr[k][j] = static_cast<scalar_t>(y[k]);
  }
  return total;
}

struct Cpu {
  static constexpr at::DeviceType kType = at::kCPU;

  template <typename Op>
  static at::Tensor run(const std::vector<std::vector<at::Tensor>>& lists, int64_t T, const at::Tensor& coef,
                        double c0, double c1) {
    const std::vector<at::Tensor>& first = lists[0];
    const at::ScalarType dtype = first[0].scalar_type();
    std::vector<int64_t> task_start;
    const std::vector<Chunk> chunks = make_chunks(first, T, kChunk, task_start);
    std::vector<double> partial(chunks.size(), 0.0);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastmaml_cg_cpu", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      std::vector<opmath_t> c0s(T, static_cast<opmath_t>(c0));
      if (coef.defined()) {
        const opmath_t* values = coef.const_data_ptr<opmath_t>();
        for (int64_t t = 0; t < T; ++t) c0s[t] = values[t];
      }
      const opmath_t c1_v = static_cast<opmath_t>(c1);
      std::vector<std::array<const scalar_t*, Op::kIn>> in(first.size());
      std::vector<std::array<scalar_t*, Op::kOut>> out(first.size());
      for (size_t i = 0; i < first.size(); ++i) {
        for (int k = 0; k < Op::kIn; ++k) in[i][k] = lists[k][i].const_data_ptr<scalar_t>();
        for (int k = 0; k < Op::kOut; ++k) out[i][k] = lists[k][i].mutable_data_ptr<scalar_t>();
      }
      at::parallel_for(0, static_cast<int64_t>(chunks.size()), kGrainChunks, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          const Chunk& ch = chunks[c];
          std::array<const scalar_t*, Op::kIn> x;
          std::array<scalar_t*, Op::kOut> y;
          for (int k = 0; k < Op::kIn; ++k) x[k] = in[ch.tensor][k] + ch.offset;
          for (int k = 0; k < Op::kOut; ++k) y[k] = out[ch.tensor][k] + ch.offset;
          partial[c] = run_chunk<scalar_t, Op>(x, y, ch.len, c0s[ch.task], c1_v);
        }
      });
    });
    if constexpr (!Op::kReduce) {
      return at::Tensor();
    } else {
      at::Tensor sums = at::empty({T}, at::TensorOptions().dtype(at::kDouble));
      double* s = sums.mutable_data_ptr<double>();
      for (int64_t t = 0; t < T; ++t) {
        double total = 0;
        for (int64_t c = task_start[t]; c < task_start[t + 1]; ++c) total += partial[c];
        s[t] = total;
      }
      return sums.to(opmath_type(dtype));
    }
  }
};

}  // namespace
}  // namespace cg

TORCH_LIBRARY_IMPL(fastmaml, CPU, m) {
  FASTMAML_REGISTER_CG_OPS(m, cg::Cpu);
}

}  // namespace fastmaml
