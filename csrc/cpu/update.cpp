// CPU kernels of the fused update: one at::parallel_for over the elements of the whole tensor list
// (many small tensors parallelise like one big one), fp32 arithmetic for the 16-bit types. Maths:
// include/fastmaml/update.h; operand layout: include/fastmaml/operands.h; the operators' wrappers:
// include/fastmaml/update_ops.h.
//
// NOTE: [cpu loop variants]
// The flat range of each tensor is cut into runs on which every operand is either one contiguous
// stretch or one value (a scalar operand, or 1 when absent): periodic operands restart at run
// boundaries, so the loops never take a modulo. Each loop is compiled once per combination of
// "stretch or value" of its operands (a template mask, chosen by a switch outside the loop), so the
// loop body has no branch and vectorises to a plain load-compute-store stream. The loops are
// compiled for AVX2 and for the baseline ISA, picked at load time (target_clones); FMA is not
// enabled, so each product and difference is rounded as in fastmaml/ops/reference.py. Float and
// double run the loops on the tensors' memory; the 16-bit types are converted to float block by
// block (kBlock elements, L1-resident) and back.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <fastmaml/update_ops.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTMAML_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTMAML_CLONES
#endif
#if defined(__clang__)
#define FASTMAML_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FASTMAML_IVDEP _Pragma("GCC ivdep")
#else
#define FASTMAML_IVDEP
#endif
#if defined(__GNUC__)
#define FASTMAML_INLINE inline __attribute__((always_inline))
#else
#define FASTMAML_INLINE inline
#endif

namespace fastmaml {
namespace {

// Elements per task of the parallel loop: below this a list runs on the calling thread (about
// 10-20 us of memory-bound work, well above the cost of waking the pool).
constexpr int64_t kGrain = 65536;
// Elements per block of the 16-bit conversion and of the backward's per-output loops.
constexpr int64_t kBlock = 1024;

// One operand over one run: a contiguous stretch (ptr), or one value for every element.
template <typename T>
struct Src {
  const T* ptr;
  T value;
};

template <int kPtr, typename T>
FASTMAML_INLINE T read(const T* ptr, T value, int64_t j) {
  if constexpr (kPtr != 0) return ptr[j];
  else return value;
}

// out[j] = update_forward(p, g, a, gamma); bit k of kMask: operand k is a stretch.
template <int kMask, typename T>
FASTMAML_INLINE void forward_loop(const Src<T>* x, T* out, int64_t n, T alpha) {
  const T *p = x[0].ptr, *g = x[1].ptr, *a = x[2].ptr, *gam = x[3].ptr;
  const T vp = x[0].value, vg = x[1].value, va = x[2].value, vgam = x[3].value;
  // out may be p (in place): element j is read before it is written, so there is no dependence
  // between iterations.
  FASTMAML_IVDEP
  for (int64_t j = 0; j < n; ++j)
    out[j] = update_forward(read<kMask & 1>(p, vp, j), read<kMask & 2>(g, vg, j),
                            read<kMask & 4>(a, va, j), read<kMask & 8>(gam, vgam, j), alpha);
}

template <typename T, int... kMask>
FASTMAML_INLINE void forward_switch(int mask, const Src<T>* x, T* out, int64_t n, T alpha,
                                    std::integer_sequence<int, kMask...>) {
  ((mask == kMask ? (forward_loop<kMask>(x, out, n, alpha), true) : false) || ...);
}

// x = (p, g, a, gamma), T = float or double.
template <typename T>
FASTMAML_CLONES void forward_kernel(const Src<T>* x, T* out, int64_t n, T alpha) {
  int mask = 0;
  for (int k = 0; k < 4; ++k) mask |= (x[k].ptr != nullptr) << k;
  forward_switch(mask, x, out, n, alpha, std::make_integer_sequence<int, 16>{});
}

// out[j] = f(x, y); bit 0 / 1 of kMask: x / y is a stretch.
template <int kMask, typename T, typename F>
FASTMAML_INLINE void binary_loop(Src<T> x, Src<T> y, T* out, int64_t n, F f) {
  FASTMAML_IVDEP
  for (int64_t j = 0; j < n; ++j)
    out[j] = f(read<kMask & 1>(x.ptr, x.value, j), read<kMask & 2>(y.ptr, y.value, j));
}

template <typename T, typename F>
FASTMAML_INLINE void binary(Src<T> x, Src<T> y, T* out, int64_t n, F f) {
  switch ((x.ptr != nullptr) | (y.ptr != nullptr) << 1) {
    case 0: binary_loop<0>(x, y, out, n, f); break;
    case 1: binary_loop<1>(x, y, out, n, f); break;
    case 2: binary_loop<2>(x, y, out, n, f); break;
    default: binary_loop<3>(x, y, out, n, f); break;
  }
}

template <typename T>
FASTMAML_INLINE Src<T> advance(Src<T> s, int64_t b) {
  return {s.ptr ? s.ptr + b : nullptr, s.value};
}

// x = (grad_output, p, g, a, gamma); out = (d p, d g, d a, d gamma), null where not wanted. One
// loop per wanted output over L1-sized blocks, so grad_output comes from memory once.
template <typename T>
FASTMAML_CLONES void backward_kernel(const Src<T>* x, T* const* out, int64_t n, T neg_alpha) {
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    const Src<T> go = advance(x[0], b);
    if (out[0]) binary(go, advance(x[4], b), out[0] + b, m, [](T o, T gam) { return update_grad_param(o, gam); });
    if (out[1]) binary(go, advance(x[3], b), out[1] + b, m, [=](T o, T a) { return update_grad_grad(o, a, neg_alpha); });
    if (out[2]) binary(go, advance(x[2], b), out[2] + b, m, [=](T o, T g) { return update_grad_lr(o, g, neg_alpha); });
    if (out[3]) binary(go, advance(x[1], b), out[3] + b, m, [](T o, T p) { return update_grad_gamma(o, p); });
  }
}

template <typename T>
void kernel(ForwardOp, const Src<T>* x, T* const* out, int64_t n, T c) {
  forward_kernel(x, out[0], n, c);
}

template <typename T>
void kernel(BackwardOp, const Src<T>* x, T* const* out, int64_t n, T c) {
  backward_kernel(x, out, n, c);
}

// NOTE: [cpu moment forms]
// The stateful forms (NOTE: [moment forms]) over blocks of kBlock elements: an operand that is one
// value (absent: 1, or a scalar) is read from a block filled once, an absent output written to a
// scratch block, so the inner loop reads and writes plain streams. For the optimizers' usual forms
// (kHotForms) the form's flags are compile-time constants of the loop: no branch is left in it and
// it vectorises (-fno-math-errno in setup.py lets sqrt vectorise; each lane is still the scalar IEEE
// operation, so every form gives the same bits either way). Other forms run the same loop with the
// flags read at run time.
constexpr int kFormBits = MomentHyper::kAdam | MomentHyper::kCentered | MomentHyper::kNesterov |
                          MomentHyper::kDirection | MomentHyper::kHasM | MomentHyper::kHasV |
                          MomentHyper::kHasB;
using MH = MomentHyper;
template <int... kForms>
using Forms = std::integer_sequence<int, kForms...>;
using HotForms = Forms<MH::kHasB, MH::kHasB | MH::kNesterov, MH::kAdam | MH::kHasM | MH::kHasV, MH::kHasV,
                       MH::kHasV | MH::kHasB, MH::kCentered | MH::kHasM | MH::kHasV,
                       MH::kCentered | MH::kHasM | MH::kHasV | MH::kHasB>;

template <typename T, typename Op>
FASTMAML_INLINE void moments_blocks(const Op& op, const Src<T>* x, T* const* out, int64_t n, T c) {
  alignas(64) T fill[Op::kIn][kBlock];
  alignas(64) T sink[kBlock];
  for (int k = 0; k < Op::kIn; ++k)
    if (!x[k].ptr) std::fill(fill[k], fill[k] + kBlock, x[k].value);
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    const T* in[Op::kIn];
    T* o[Op::kOut];
    for (int k = 0; k < Op::kIn; ++k) in[k] = x[k].ptr ? x[k].ptr + b : fill[k];
    for (int k = 0; k < Op::kOut; ++k) o[k] = out[k] ? out[k] + b : sink;
    FASTMAML_IVDEP
    for (int64_t j = 0; j < m; ++j) {
      std::array<T, Op::kIn> v;
      std::array<T, Op::kOut> y;
      for (int k = 0; k < Op::kIn; ++k) v[k] = in[k][j];
      op(v, c, y);
      for (int k = 0; k < Op::kOut; ++k) o[k][j] = y[k];
    }
  }
}

// The loop with the form's flags fixed to kForm (the other bits of the op's flags kept).
template <int kForm, typename T, typename Op>
FASTMAML_CLONES void moments_fixed(const Op& op, const Src<T>* x, T* const* out, int64_t n, T c) {
  Op fixed = op;
  fixed.h.flags = kForm | (op.h.flags & ~kFormBits);
  moments_blocks(fixed, x, out, n, c);
}

template <typename T, typename Op>
FASTMAML_CLONES void moments_any(const Op& op, const Src<T>* x, T* const* out, int64_t n, T c) {
  moments_blocks(op, x, out, n, c);
}

template <typename T, typename Op, int... kForms>
FASTMAML_INLINE void moments_switch(const Op& op, const Src<T>* x, T* const* out, int64_t n, T c,
                                    Forms<kForms...>) {
  const int form = op.h.flags & kFormBits;
  const bool hot = ((form == kForms ? (moments_fixed<kForms>(op, x, out, n, c), true) : false) || ...);
  if (!hot) moments_any(op, x, out, n, c);
}

template <typename T>
void kernel(const MomentsForwardOp& op, const Src<T>* x, T* const* out, int64_t n, T c) {
  moments_switch(op, x, out, n, c, HotForms{});
}

template <typename T>
void kernel(const MomentsBackwardOp& op, const Src<T>* x, T* const* out, int64_t n, T c) {
  moments_switch(op, x, out, n, c, HotForms{});
}

// One run of one job (NOTE: [cpu loop variants]): elements [lo, lo + len), operand k a stretch
// from off[k] or one value.
template <typename scalar_t, int kIn, int kOut, typename Op>
void run(const Job<scalar_t, kIn, kOut>& job, int64_t lo, int64_t len,
         const std::array<int64_t, kIn>& off, at::opmath_type<scalar_t> c, Op op) {
  using opmath_t = at::opmath_type<scalar_t>;
  std::array<Src<opmath_t>, kIn> x;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    for (int k = 0; k < kIn; ++k) {
      const int64_t period = job.period[k];
      x[k] = period > 1 ? Src<opmath_t>{job.in[k] + off[k], 1}
                        : Src<opmath_t>{nullptr, period == 1 ? job.in[k][0] : opmath_t(1)};
    }
    std::array<scalar_t*, kOut> out;
    for (int k = 0; k < kOut; ++k) out[k] = job.out[k] ? job.out[k] + lo : nullptr;
    kernel(op, x.data(), out.data(), len, c);
  } else {
    // 16-bit types: convert each block of stretches to float, run the float loops, convert back.
    alignas(64) opmath_t in_buf[kIn][kBlock];
    alignas(64) opmath_t out_buf[kOut][kBlock];
    std::array<opmath_t*, kOut> out;
    for (int k = 0; k < kOut; ++k) out[k] = job.out[k] ? out_buf[k] : nullptr;
    for (int k = 0; k < kIn; ++k) {
      const int64_t period = job.period[k];
      x[k] = period > 1 ? Src<opmath_t>{in_buf[k], 1}
                        : Src<opmath_t>{nullptr, period == 1 ? static_cast<opmath_t>(job.in[k][0]) : opmath_t(1)};
    }
    for (int64_t b = 0; b < len; b += kBlock) {
      const int64_t m = std::min(kBlock, len - b);
      for (int k = 0; k < kIn; ++k) {
        if (job.period[k] <= 1) continue;
        const scalar_t* src = job.in[k] + off[k] + b;
        for (int64_t j = 0; j < m; ++j) in_buf[k][j] = static_cast<opmath_t>(src[j]);
      }
      kernel(op, x.data(), out.data(), m, c);
      for (int k = 0; k < kOut; ++k) {
        if (!job.out[k]) continue;
        scalar_t* dst = job.out[k] + lo + b;
        for (int64_t j = 0; j < m; ++j) dst[j] = static_cast<scalar_t>(out_buf[k][j]);
      }
    }
  }
}

// Elements [lo, hi) of one job, cut into runs on which every operand is contiguous or one value
// (NOTE: [operand periods]).
template <typename scalar_t, int kIn, int kOut, typename Op>
void span(const Job<scalar_t, kIn, kOut>& job, int64_t lo, int64_t hi, at::opmath_type<scalar_t> c,
          const Op& op) {
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
}

// Splits the flat element range of all jobs into parallel tasks, each job's part of a task into runs.
template <typename scalar_t, int kIn, int kOut, typename Op>
void for_all(const std::vector<Job<scalar_t, kIn, kOut>>& jobs, double c, const Op& op) {
  if (jobs.empty()) return;
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t c_op = static_cast<opmath_t>(c);
  std::vector<int64_t> start(jobs.size() + 1, 0);
  for (size_t t = 0; t < jobs.size(); ++t) start[t + 1] = start[t] + jobs[t].n;
  auto task = [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
    for (int64_t pos = begin; pos < end; ++t) {
      const int64_t hi = std::min(end, start[t + 1]);
      span(jobs[t], pos - start[t], hi - start[t], c_op, op);
      pos = hi;
    }
  };
  if (start.back() <= kGrain) task(0, start.back());  // skips parallel_for's bookkeeping
  else at::parallel_for(0, start.back(), kGrain, task);
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
