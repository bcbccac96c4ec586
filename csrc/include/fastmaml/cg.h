// The fused vector algebra of the batched conjugate gradient (fastmaml/cg.py): elementwise maths
// shared by the CPU and CUDA kernels, and the host-side checks and work lists.
//
// NOTE: [cg ops] A vector is a list of tensors with a leading task dimension T; tensor i is read as
// T contiguous segments of n_i = numel / T elements. Every reduction is per task, accumulated in
// opmath (float for the 16-bit types) within a chunk of one segment, then in double over the chunks
// of a task in a fixed order: the result does not depend on the number of threads.
//   cg_dot(a, b)                     s[t] = <a[t], b[t]>
//   cg_matvec_dot_(hp, p, c0, c1)    hp <- q = c0 p + c1 hp;            s[t] = <p[t], q[t]>
//   cg_step_(x, r, p, q, alpha)      x <- x + alpha_t p; r <- r - alpha_t q;  s[t] = <r[t], r[t]>
//   cg_direction_(p, r, beta)        p <- r + beta_t p
// The reductions use the opmath values before they are rounded to a 16-bit type. Same names and
// the reference in fastmaml/ops/cg/.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTMAML_CG_HD __host__ __device__ __forceinline__
#else
#define FASTMAML_CG_HD inline
#endif

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <vector>

namespace fastmaml {
namespace cg {

// q = c0 * p + c1 * hp
template <typename T>
FASTMAML_CG_HD T matvec(T p, T hp, T c0, T c1) {
  return c0 * p + c1 * hp;
}

// x + alpha * p
template <typename T>
FASTMAML_CG_HD T axpy(T x, T alpha, T p) {
  return x + alpha * p;
}

// r - alpha * q
template <typename T>
FASTMAML_CG_HD T axmy(T r, T alpha, T q) {
  return r - alpha * q;
}

// r + beta * p
template <typename T>
FASTMAML_CG_HD T direction(T r, T beta, T p) {
  return r + beta * p;
}

// The four ops as (kIn inputs) -> (kOut outputs, output k written over input k) plus a per-task
// reduction term; c0 and c1 are the op's coefficients for the element's task.
//   Dot:       in (a, b)            term a b
//   MatvecDot: in (hp, p)  out hp   term p q
//   Step:      in (x, r, p, q)  out (x, r)   term r r
//   Direction: in (p, r)   out p    no term
struct Dot {
  static constexpr int kIn = 2, kOut = 0;
  static constexpr bool kReduce = true;
  template <typename V, typename X, typename Y>
  FASTMAML_CG_HD V operator()(const X& x, V, V, Y&) const { return x[0] * x[1]; }
};

struct MatvecDot {
  static constexpr int kIn = 2, kOut = 1;
  static constexpr bool kReduce = true;
  template <typename V, typename X, typename Y>
  FASTMAML_CG_HD V operator()(const X& x, V c0, V c1, Y& y) const {
    y[0] = matvec(x[1], x[0], c0, c1);
    return x[1] * y[0];
  }
};

struct Step {
  static constexpr int kIn = 4, kOut = 2;
  static constexpr bool kReduce = true;
  template <typename V, typename X, typename Y>
  FASTMAML_CG_HD V operator()(const X& x, V alpha, V, Y& y) const {
    y[0] = axpy(x[0], alpha, x[2]);
    y[1] = axmy(x[1], alpha, x[3]);
    return y[1] * y[1];
  }
};

struct Direction {
  static constexpr int kIn = 2, kOut = 1;
  static constexpr bool kReduce = false;
  template <typename V, typename X, typename Y>
  FASTMAML_CG_HD V operator()(const X& x, V beta, V, Y& y) const {
    y[0] = direction(x[1], beta, x[0]);
    return V(0);
  }
};

// ---- host side ---------------------------------------------------------------------------------

inline at::ScalarType opmath_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks the lists (names[k] for messages) and returns T. Every tensor has the shape of lists[0][i],
// the dtype of lists[0][0], a leading dim T, and lives on a `device_type` device.
inline int64_t check_lists(const char* op, const std::vector<const char*>& names,
                           const std::vector<at::TensorList>& lists, at::DeviceType device_type) {
  const at::TensorList first = lists[0];
  TORCH_CHECK(!first.empty(), op, ": ", names[0], " is empty; a vector needs at least one tensor");
  const at::Tensor& ref = first[0];
  TORCH_CHECK(ref.dim() > 0, op, ": ", names[0], "[0] must have a leading task dimension, got a 0-d tensor");
  TORCH_CHECK(ref.device().type() == device_type, op, ": ", names[0], "[0] is on ", ref.device(),
              ", expected a ", device_type, " tensor");
  TORCH_CHECK(at::isFloatingType(ref.scalar_type()), op, ": ", names[0], "[0] must be floating point, got ",
              ref.scalar_type());
  const int64_t T = ref.size(0);
  for (size_t k = 0; k < lists.size(); ++k) {
    TORCH_CHECK(lists[k].size() == first.size(), op, ": ", names[k], " has ", lists[k].size(),
                " tensors but ", names[0], " has ", first.size());
    for (size_t i = 0; i < first.size(); ++i) {
      const at::Tensor& t = lists[k][i];
      TORCH_CHECK(t.sizes() == first[i].sizes(), op, ": ", names[k], "[", i, "] has shape ", t.sizes(),
                  " but ", names[0], "[", i, "] has ", first[i].sizes());
      TORCH_CHECK(t.dim() > 0 && t.size(0) == T, op, ": ", names[k], "[", i, "] has shape ", t.sizes(),
                  "; every tensor needs the leading task dimension ", T);
      TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", names[k], "[", i, "] has dtype ",
                  t.scalar_type(), " but ", names[0], "[0] has ", ref.scalar_type());
      TORCH_CHECK(t.device() == ref.device(), op, ": ", names[k], "[", i, "] is on ", t.device(), " but ",
                  names[0], "[0] is on ", ref.device());
    }
  }
  return T;
}

inline void check_coef(const char* op, const char* name, const at::Tensor& c, const at::Tensor& ref,
                       int64_t T) {
  TORCH_CHECK(c.dim() == 1 && c.size(0) == T && c.scalar_type() == opmath_type(ref.scalar_type()) &&
                  c.device() == ref.device(),
              op, ": ", name, " must be a [", T, "] ", opmath_type(ref.scalar_type()), " tensor on ",
              ref.device(), ", got ", c.sizes(), " ", c.scalar_type(), " on ", c.device());
}

// Contiguous versions of the lists; `written` lists come back as (dst, originals) so the caller can
// copy the results back into non-contiguous originals (write_back).
struct Prepared {
  std::vector<std::vector<at::Tensor>> lists;  // contiguous
};

inline Prepared prepare(const std::vector<at::TensorList>& lists) {
  Prepared out;
  for (const auto& list : lists) {
    std::vector<at::Tensor> c;
    c.reserve(list.size());
    for (const auto& t : list) c.push_back(t.contiguous());
    out.lists.push_back(std::move(c));
  }
  return out;
}

inline void write_back(at::TensorList originals, const std::vector<at::Tensor>& dst) {
  for (size_t i = 0; i < originals.size(); ++i)
    if (!dst[i].is_same(originals[i])) originals[i].copy_(dst[i]);
}

// One chunk of work: elements [offset, offset + len) of every list's tensor `tensor`, of task `task`.
struct Chunk {
  int64_t tensor;
  int64_t offset;
  int64_t len;
  int64_t task;
};

// Chunks ordered by task, then tensor, then position; task_start[t] is the first chunk of task t.
inline std::vector<Chunk> make_chunks(const std::vector<at::Tensor>& first, int64_t T, int64_t chunk,
                                      std::vector<int64_t>& task_start) {
  std::vector<Chunk> chunks;
  task_start.assign(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) {
    task_start[t] = static_cast<int64_t>(chunks.size());
    for (size_t i = 0; i < first.size(); ++i) {
      const int64_t n = T == 0 ? 0 : first[i].numel() / T;
      for (int64_t lo = 0; lo < n; lo += chunk)
        chunks.push_back({static_cast<int64_t>(i), t * n + lo, std::min(chunk, n - lo), t});
    }
  }
  task_start[T] = static_cast<int64_t>(chunks.size());
  return chunks;
}

}  // namespace cg
}  // namespace fastmaml

// ---- the operators, for an engine E (the CPU or CUDA kernels) ------------------------------------
// E::run<Op>(lists, T, coef, c0, c1) runs Op over contiguous lists (written in place where Op writes),
// with the per-task coefficient coef[t] ([T] opmath tensor) or the constant c0 when coef is
// undefined, and returns the per-task reduction ([T] opmath) or an undefined tensor.
namespace fastmaml {
namespace cg {

template <class E>
at::Tensor dot(at::TensorList a, at::TensorList b) {
  const int64_t T = check_lists("cg_dot", {"a", "b"}, {a, b}, E::kType);
  Prepared prep = prepare({a, b});
  return E::template run<Dot>(prep.lists, T, at::Tensor(), 1.0, 1.0);
}

template <class E>
at::Tensor matvec_dot_(at::TensorList hp, at::TensorList p, double c0, double c1) {
  const int64_t T = check_lists("cg_matvec_dot_", {"hp", "p"}, {hp, p}, E::kType);
  Prepared prep = prepare({hp, p});
  at::Tensor s = E::template run<MatvecDot>(prep.lists, T, at::Tensor(), c0, c1);
  write_back(hp, prep.lists[0]);
  return s;
}

template <class E>
at::Tensor step_(at::TensorList x, at::TensorList r, at::TensorList p, at::TensorList q,
                 const at::Tensor& alpha) {
  const int64_t T = check_lists("cg_step_", {"x", "r", "p", "q"}, {x, r, p, q}, E::kType);
  check_coef("cg_step_", "alpha", alpha, x[0], T);
  Prepared prep = prepare({x, r, p, q});
  at::Tensor s = E::template run<Step>(prep.lists, T, alpha.contiguous(), 0.0, 0.0);
  write_back(x, prep.lists[0]);
  write_back(r, prep.lists[1]);
  return s;
}

template <class E>
void direction_(at::TensorList p, at::TensorList r, const at::Tensor& beta) {
  const int64_t T = check_lists("cg_direction_", {"p", "r"}, {p, r}, E::kType);
  check_coef("cg_direction_", "beta", beta, p[0], T);
  Prepared prep = prepare({p, r});
  E::template run<Direction>(prep.lists, T, beta.contiguous(), 0.0, 0.0);
  write_back(p, prep.lists[0]);
}

}  // namespace cg
}  // namespace fastmaml

#define FASTMAML_REGISTER_CG_OPS(m, Engine)                        \
  do {                                                             \
    m.impl("cg_dot", &::fastmaml::cg::dot<Engine>);                \
    m.impl("cg_matvec_dot_", &::fastmaml::cg::matvec_dot_<Engine>); \
    m.impl("cg_step_", &::fastmaml::cg::step_<Engine>);            \
    m.impl("cg_direction_", &::fastmaml::cg::direction_<Engine>);  \
  } while (0)
