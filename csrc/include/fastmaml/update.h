// The elementwise maths of the fused inner update and its backward: one source for the CPU
// kernels (scalars and at::vec::Vectorized values) and the CUDA kernels (scalars).
//
// NOTE: [update forms]
// Every form is the one expression  out = gamma * p - alpha * (a * g):
//   sgd     a = 1, gamma = 1        (no lrs, no gammas)
//   scaled  a = lrs[i],  gamma = 1  (Meta-SGD, MAML++ LSLR)
//   forget  gamma = gammas[i], a = lrs[i] or 1  (L2F)
// A missing a or gamma is the exact constant 1, so each form gives the same bits as the plain
// expression without it (1 * x == x). The evaluation order matches fastmaml/ops/reference.py:
// the step a * g first, then alpha * step, then the subtraction.
// a and gamma are read either as one scalar or periodically, element i using a[i % period]
// (NOTE: [operand periods] in operands.h).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTMAML_HD __host__ __device__ __forceinline__
#else
#define FASTMAML_HD inline
#endif

namespace fastmaml {

// out = gamma * p - alpha * (a * g)
template <typename T>
FASTMAML_HD T update_forward(T p, T g, T a, T gamma, T alpha) {
  return gamma * p - alpha * (a * g);
}

// d out / d p = gamma
template <typename T>
FASTMAML_HD T update_grad_param(T go, T gamma) {
  return gamma * go;
}

// d out / d g = -alpha * a
template <typename T>
FASTMAML_HD T update_grad_grad(T go, T a, T neg_alpha) {
  return neg_alpha * (a * go);
}

// d out / d a = -alpha * g   (elementwise; reduced to a's shape by the caller)
template <typename T>
FASTMAML_HD T update_grad_lr(T go, T g, T neg_alpha) {
  return neg_alpha * (g * go);
}

// d out / d gamma = p   (elementwise; reduced to gamma's shape by the caller)
template <typename T>
FASTMAML_HD T update_grad_gamma(T go, T p) {
  return p * go;
}

// The kernels' per-element functions over operand slots (read modulo their periods, NOTE: [operand
// periods] in operands.h), for scalars and CPU vectors alike. c is alpha forward, -alpha backward.

// x = (p, g, a, gamma); y = (out)
struct ForwardOp {
  static constexpr int kIn = 4, kOut = 1;
  template <typename X, typename T, typename Y>
  FASTMAML_HD void operator()(const X& x, const T& alpha, Y& y) const {
    y[0] = update_forward(x[0], x[1], x[2], x[3], alpha);
  }
};

// x = (grad_output, p, g, a, gamma); y = (d params, d grads, d lrs, d gammas)
struct BackwardOp {
  static constexpr int kIn = 5, kOut = 4;
  template <typename X, typename T, typename Y>
  FASTMAML_HD void operator()(const X& x, const T& neg_alpha, Y& y) const {
    y[0] = update_grad_param(x[0], x[4]);
    y[1] = update_grad_grad(x[0], x[3], neg_alpha);
    y[2] = update_grad_lr(x[0], x[2], neg_alpha);
    y[3] = update_grad_gamma(x[0], x[1]);
  }
};

}  // namespace fastmaml
