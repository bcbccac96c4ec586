// CPU kernels of the fused update: one at::parallel_for over the elements of the whole tensor list
// (many small tensors parallelise like one big one), vectorised with at::vec, fp32 arithmetic for
// the 16-bit types. Maths: include/fastmaml/update.h; operand layout: include/fastmaml/operands.h;
// the operators' wrappers: include/fastmaml/update_ops.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <fastmaml/update_ops.h>

namespace fastmaml {
namespace {

// Elements per task of the parallel loop: below this a list runs on one thread.
constexpr int64_t kGrain = 32768;

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

// Elements [lo, lo + len) of one job, within which each operand k is absent (1), one scalar, or one
// contiguous run starting at off[k]. `op(x, c, y)` maps the kIn operands to the kOut outputs, for
// opmath scalars and vectors alike.
template <typename scalar_t, int kIn, int kOut, typename Op>
void run(const Job<scalar_t, kIn, kOut>& job, int64_t lo, int64_t len,
         const std::array<int64_t, kIn>& off, double c, const Op& op) {
  using opmath_t = at::opmath_type<scalar_t>;
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  using Pack = typename L::Pack;
  std::array<opmath_t, kIn> scalar;  // the value of each operand that is not a run
  std::array<Pack, kIn> splat;
  std::array<bool, kIn> is_run;
  for (int k = 0; k < kIn; ++k) {
    is_run[k] = job.period[k] > 1;
    scalar[k] = job.period[k] == 1 ? static_cast<opmath_t>(job.in[k][0]) : opmath_t(1);
    splat[k].fill(V(scalar[k]));
  }
  const opmath_t c_s = static_cast<opmath_t>(c);
  const V c_v(c_s);

  int64_t j = 0;
  for (; j + L::kWidth <= len; j += L::kWidth) {
    std::array<Pack, kIn> x;
    for (int k = 0; k < kIn; ++k) x[k] = is_run[k] ? L::load(job.in[k] + off[k] + j) : splat[k];
    std::array<Pack, kOut> y;
    for (size_t part = 0; part < std::tuple_size_v<Pack>; ++part) {
      std::array<V, kIn> xp;
      std::array<V, kOut> yp;
      for (int k = 0; k < kIn; ++k) xp[k] = x[k][part];
      op(xp, c_v, yp);
      for (int k = 0; k < kOut; ++k) y[k][part] = yp[k];
    }
    for (int k = 0; k < kOut; ++k)
      if (job.out[k]) L::store(job.out[k] + lo + j, y[k]);
  }
  for (; j < len; ++j) {
    std::array<opmath_t, kIn> x;
    for (int k = 0; k < kIn; ++k)
      x[k] = is_run[k] ? static_cast<opmath_t>(job.in[k][off[k] + j]) : scalar[k];
    std::array<opmath_t, kOut> y;
    op(x, c_s, y);
    for (int k = 0; k < kOut; ++k)
      if (job.out[k]) job.out[k][lo + j] = static_cast<scalar_t>(y[k]);
  }
}

// Splits the flat element range of all jobs into parallel tasks, and each job's part of a task into
// runs on which every operand is contiguous (NOTE: [operand periods]).
template <typename scalar_t, int kIn, int kOut, typename Op>
void for_all(const std::vector<Job<scalar_t, kIn, kOut>>& jobs, double c, const Op& op) {
  std::vector<int64_t> start(jobs.size() + 1, 0);
  for (size_t t = 0; t < jobs.size(); ++t) start[t + 1] = start[t] + jobs[t].n;
  at::parallel_for(0, start.back(), kGrain, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
    for (int64_t pos = begin; pos < end; ++t) {
      const auto& job = jobs[t];
      int64_t lo = pos - start[t];
      const int64_t hi = std::min(end, start[t + 1]) - start[t];
      while (lo < hi) {
        int64_t len = hi - lo;
        std::array<int64_t, kIn> off{};
        for (int k = 0; k < kIn; ++k) {
          if (job.period[k] <= 1) continue;
          off[k] = lo % job.period[k];
          len = std::min(len, job.period[k] - off[k]);
        }
        run<scalar_t, kIn, kOut>(job, lo, len, off, c, op);
        lo += len;
      }
      pos = start[t] + hi;
    }
  });
}

struct Cpu {
  static constexpr at::DeviceType kType = at::kCPU;

  template <typename Op>
  static void launch(at::TensorList params, const Operands& in,
                     const std::vector<std::vector<at::Tensor>>& outs, double c, const Op& op) {
    for (const auto& [dtype, indices] : group_by_dtype(params)) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastmaml_update_cpu", [&] {
        for_all(make_jobs<scalar_t, Op::kIn, Op::kOut>(params, in, outs, indices), c, op);
      });
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastmaml, CPU, m) {
  FASTMAML_REGISTER_UPDATE_OPS(m, Cpu);
}

}  // namespace fastmaml
