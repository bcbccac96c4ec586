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

#include <cmath>

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

// NOTE: [moment forms]
// The stateful inner optimizers (SGD with momentum, Adam, AdamW, RMSprop) are one elementwise map
// from the gradient g (and p, and the state tensors m, v, b) to a direction d and the new state:
//   g' = g + wd * p                                        (coupled weight decay; p read if wd != 0)
//   m' = b1 * m + c1 * g'                                  (if m: Adam's first moment, RMSprop's
//                                                           centered mean of g')
//   v' = b2 * v + c2 * (g' * g')                           (if v: the second moment)
//   n  = s1 * m' if ADAM else g'
//   q  = n / (sqrt(s2 * v' - [m' * m' if CENTERED] + eps_in) + eps)      if v, else q = n
//   b' = mu * b + c * q;  d = q + mu * b' if NESTEROV else b'            (if b: the momentum trace)
// and the parameters then move by the plain update  p - lr * d  (or (1 - lr * wd_decoupled) * p -
// lr * d for AdamW, the "forget" form): one fused_update over all tensors (NOTE: [update forms]).
// The hyper-parameters (MomentHyper) are per call: the step's bias corrections are folded into s1
// and s2 by the caller (fastmaml/ops/moments/__init__.py, which maps torch.optim's, higher's and
// TorchOpt's definitions onto them). The derivative of sqrt at 0 (v' = 0 and no eps_in: g' and v
// both zero there) is taken as 0, as higher masks it.
struct MomentHyper {
  double wd = 0, b1 = 0, c1 = 0, b2 = 0, c2 = 0, s1 = 1, s2 = 1, eps_in = 0, eps = 0, mu = 0, c = 1;
  int flags = 0;  // kAdam | kCentered | kNesterov | which operands are passed (kHas*)
  static constexpr int kAdam = 1, kCentered = 2, kNesterov = 4, kHasP = 8, kHasM = 16, kHasV = 32,
                       kHasB = 64;
  static constexpr int kNumHyper = 11;  // the float[] hyper of the schema, in the order above
};

template <typename T>
FASTMAML_HD T moment_sqrt(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// x = (g, p, m, v, b); y = (d, m', v', b'). Absent operands are not read (their slots hold 1).
struct MomentsForwardOp {
  static constexpr int kIn = 5, kOut = 4;
  MomentHyper h;
  template <typename X, typename T, typename Y>
  FASTMAML_HD void operator()(const X& x, const T&, Y& y) const {
    const int f = h.flags;
    T g = x[0];
    if (f & MomentHyper::kHasP) g = g + T(h.wd) * x[1];
    T m = 0, v = 0;
    if (f & MomentHyper::kHasM) m = T(h.b1) * x[2] + T(h.c1) * g;
    if (f & MomentHyper::kHasV) v = T(h.b2) * x[3] + T(h.c2) * (g * g);
    T q = (f & MomentHyper::kAdam) ? T(h.s1) * m : g;
    if (f & MomentHyper::kHasV) {
      T w = T(h.s2) * v;
      if (f & MomentHyper::kCentered) w = w - m * m;
      q = q / (moment_sqrt(w + T(h.eps_in)) + T(h.eps));
    }
    T d = q, b = 0;
    if (f & MomentHyper::kHasB) {
      b = T(h.mu) * x[4] + T(h.c) * q;
      d = (f & MomentHyper::kNesterov) ? q + T(h.mu) * b : b;
    }
    y[0] = d;
    y[1] = m;
    y[2] = v;
    y[3] = b;
  }
};

// x = (grad d, grad m', grad v', grad b', g, p, m, v), the grads of absent outputs not read (zero);
// y = (d g, d p, d m, d v, d b): reverse mode through NOTE: [moment forms], the forward recomputed.
struct MomentsBackwardOp {
  static constexpr int kIn = 8, kOut = 5;
  static constexpr int kHasGd = 1 << 8, kHasGm = 1 << 9, kHasGv = 1 << 10, kHasGb = 1 << 11;
  MomentHyper h;
  template <typename X, typename T, typename Y>
  FASTMAML_HD void operator()(const X& x, const T&, Y& y) const {
    const int f = h.flags;
    const T gd = (f & kHasGd) ? x[0] : T(0), gm_out = (f & kHasGm) ? x[1] : T(0);
    const T gv_out = (f & kHasGv) ? x[2] : T(0), gb_out = (f & kHasGb) ? x[3] : T(0);
    // forward, as MomentsForwardOp
    T g = x[4];
    if (f & MomentHyper::kHasP) g = g + T(h.wd) * x[5];
    T m = 0, v = 0;
    if (f & MomentHyper::kHasM) m = T(h.b1) * x[6] + T(h.c1) * g;
    if (f & MomentHyper::kHasV) v = T(h.b2) * x[7] + T(h.c2) * (g * g);
    const T n = (f & MomentHyper::kAdam) ? T(h.s1) * m : g;
    // backward
    T gq = gd, gb_in = 0;
    if (f & MomentHyper::kHasB) {
      const bool nesterov = f & MomentHyper::kNesterov;
      const T gb_total = gb_out + (nesterov ? T(h.mu) * gd : gd);
      gq = (nesterov ? gd : T(0)) + T(h.c) * gb_total;
      gb_in = T(h.mu) * gb_total;
    }
    T gn = gq, gm = gm_out, gv = gv_out;
    if (f & MomentHyper::kHasV) {
      T w = T(h.s2) * v;
      if (f & MomentHyper::kCentered) w = w - m * m;
      const T r = moment_sqrt(w + T(h.eps_in));
      const T den = r + T(h.eps);
      gn = gq / den;
      const T gw = r == T(0) ? T(0) : -(gq * (n / den) / den) / (T(2) * r);
      gv = gv + T(h.s2) * gw;
      if (f & MomentHyper::kCentered) gm = gm - T(2) * m * gw;
    }
    T gg = 0;
    if (f & MomentHyper::kAdam) gm = gm + T(h.s1) * gn;
    else gg = gn;
    if (f & MomentHyper::kHasM) gg = gg + T(h.c1) * gm;
    if (f & MomentHyper::kHasV) gg = gg + T(h.c2) * (T(2) * g * gv);
    y[0] = gg;
    y[1] = T(h.wd) * gg;
    y[2] = T(h.b1) * gm;
    y[3] = T(h.b2) * gv;
    y[4] = gb_in;
  }
};

}  // namespace fastmaml
