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
// from the parameter p, its gradient g and the state tensors m, v, b to the new parameter and the
// new state, one op per update:
//   g' = g + wd * p                                        (coupled weight decay, if wd != 0)
//   m' = b1 * m + c1 * g'                                  (if m: Adam's first moment, RMSprop's
//                                                           centered mean of g')
//   v' = b2 * v + c2 * (g' * g')                           (if v: the second moment)
//   n  = s1 * m' if ADAM else g'
//   q  = n / (sqrt(s2 * v' - [m' * m' if CENTERED] + eps_in) + eps)      if v, else q = n
//   b' = mu * b + c * q;  d = q + mu * b' if NESTEROV else b'            (if b: the momentum trace)
//   p' = gamma * p - alpha * (a * d),  gamma = keep - a * dd             (NOTE: [update forms])
// a is the learned rate (lrs[i], read modulo its period; 1 when absent), alpha the scalar rate; the
// decoupled decay of AdamW is gamma: keep = 1 - lr * wd and dd = 0 for a number lr (the product
// taken in double, as torch.optim does), keep = 1 and dd = alpha * wd for rate tensors, keep = 1
// and dd = 0 (gamma exactly 1) without it. With DIRECTION the op returns d instead of p' (TorchOpt's
// functional API, whose update is -lr * d). The hyper-parameters (MomentHyper) are per call: the
// step's bias corrections are folded into s1 and s2 by the caller (fastmaml/ops/moments/__init__.py,
// which maps torch.optim's, higher's and TorchOpt's definitions onto them). The derivative of sqrt
// at 0 (v' = 0 and no eps_in: g' and v both zero there) is taken as 0, as higher masks it.
struct MomentHyper {
  double wd = 0, b1 = 0, c1 = 0, b2 = 0, c2 = 0, s1 = 1, s2 = 1, eps_in = 0, eps = 0, mu = 0, c = 1,
         keep = 1, dd = 0;
  int flags = 0;  // kAdam | kCentered | kNesterov | kDirection | which operands are passed (kHas*)
  static constexpr int kAdam = 1, kCentered = 2, kNesterov = 4, kDirection = 8, kUserFlags = 16,
                       kHasM = 16, kHasV = 32, kHasB = 64;
  static constexpr int kNumHyper = 13;  // the float[] hyper of the schema, in the order above
};

template <typename T>
FASTMAML_HD T moment_sqrt(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// The forward's intermediate values of one element, shared by the forward and the backward.
template <typename T>
struct MomentValues {
  T g, m, v, n, r, den, q, b, d, gamma;

  FASTMAML_HD MomentValues(const MomentHyper& h, T p, T g_in, T a, T m_in, T v_in, T b_in) {
    const int f = h.flags;
    g = g_in;
    if (h.wd != 0) g = g + T(h.wd) * p;
    m = 0;
    v = 0;
    if (f & MomentHyper::kHasM) m = T(h.b1) * m_in + T(h.c1) * g;
    if (f & MomentHyper::kHasV) v = T(h.b2) * v_in + T(h.c2) * (g * g);
    n = (f & MomentHyper::kAdam) ? T(h.s1) * m : g;
    q = n;
    r = 0;
    den = 1;
    if (f & MomentHyper::kHasV) {
      T w = T(h.s2) * v;
      if (f & MomentHyper::kCentered) w = w - m * m;
      r = moment_sqrt(w + T(h.eps_in));
      den = r + T(h.eps);
      q = n / den;
    }
    d = q;
    b = 0;
    if (f & MomentHyper::kHasB) {
      b = T(h.mu) * b_in + T(h.c) * q;
      d = (f & MomentHyper::kNesterov) ? q + T(h.mu) * b : b;
    }
    gamma = T(h.keep);
    if (h.dd != 0) gamma = gamma - a * T(h.dd);
  }
};

// x = (p, g, a, m, v, b); y = (p' or d, m', v', b'); c = alpha. Absent operands are not read (their
// slots hold 1).
struct MomentsForwardOp {
  static constexpr int kIn = 6, kOut = 4;
  MomentHyper h;
  template <typename X, typename T, typename Y>
  FASTMAML_HD void operator()(const X& x, const T& alpha, Y& y) const {
    const MomentValues<T> s(h, x[0], x[1], x[2], x[3], x[4], x[5]);
    y[0] = (h.flags & MomentHyper::kDirection) ? s.d : update_forward(x[0], s.d, x[2], s.gamma, alpha);
    y[1] = s.m;
    y[2] = s.v;
    y[3] = s.b;
  }
};

// x = (grad out, grad m', grad v', grad b', p, g, a, m, v, b), the grads of absent outputs not read
// (zero); y = (d p, d g, d a, d m, d v, d b); c = alpha: reverse mode through NOTE: [moment forms],
// the forward recomputed. d a has p's shape: the caller reduces it to a's.
struct MomentsBackwardOp {
  static constexpr int kIn = 10, kOut = 6;
  static constexpr int kHasGo = 1 << 8, kHasGm = 1 << 9, kHasGv = 1 << 10, kHasGb = 1 << 11;
  MomentHyper h;
  template <typename X, typename T, typename Y>
  FASTMAML_HD void operator()(const X& x, const T& alpha, Y& y) const {
    const int f = h.flags;
    const T go = (f & kHasGo) ? x[0] : T(0), gm_out = (f & kHasGm) ? x[1] : T(0);
    const T gv_out = (f & kHasGv) ? x[2] : T(0), gb_out = (f & kHasGb) ? x[3] : T(0);
    const T p = x[4], a = x[6];
    const MomentValues<T> s(h, p, x[5], a, x[7], x[8], x[9]);
    const bool direction = f & MomentHyper::kDirection;
    // through p' = gamma * p - alpha * (a * d)
    const T gd = direction ? go : update_grad_grad(go, a, -alpha);
    T gp = direction ? T(0) : update_grad_param(go, s.gamma);
    T ga = direction ? T(0) : update_grad_lr(go, s.d, -alpha);
    if (!direction && h.dd != 0) ga = ga - T(h.dd) * (p * go);
    // through b' and d
    T gq = gd, gb_in = 0;
    if (f & MomentHyper::kHasB) {
      const bool nesterov = f & MomentHyper::kNesterov;
      const T gb_total = gb_out + (nesterov ? T(h.mu) * gd : gd);
      gq = (nesterov ? gd : T(0)) + T(h.c) * gb_total;
      gb_in = T(h.mu) * gb_total;
    }
    // through q = n / (sqrt(w) + eps)
    T gn = gq, gm = gm_out, gv = gv_out;
    if (f & MomentHyper::kHasV) {
      gn = gq / s.den;
      const T gw = s.r == T(0) ? T(0) : -(gq * (s.n / s.den) / s.den) / (T(2) * s.r);
      gv = gv + T(h.s2) * gw;
      if (f & MomentHyper::kCentered) gm = gm - T(2) * s.m * gw;
    }
    // through m', v' and g'
    T gg = 0;
    if (f & MomentHyper::kAdam) gm = gm + T(h.s1) * gn;
    else gg = gn;
    if (f & MomentHyper::kHasM) gg = gg + T(h.c1) * gm;
    if (f & MomentHyper::kHasV) gg = gg + T(h.c2) * (T(2) * s.g * gv);
    if (h.wd != 0) gp = gp + T(h.wd) * gg;
    y[0] = gp;
    y[1] = gg;
    y[2] = ga;
    y[3] = T(h.b1) * gm;
    y[4] = T(h.b2) * gv;
    y[5] = gb_in;
  }
};

}  // namespace fastmaml
