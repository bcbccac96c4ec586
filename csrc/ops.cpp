// The schemas of every fastmaml operator. Implementations: the update and CG kernels per device in
// cpu/ and cuda/, the chain maths in chain.cpp; the autograd nodes in autograd/ (update.cpp,
// chain.cpp); the fake and vmap rules in fastmaml/ops/_autograd.py. The update's operands: NOTE:
// [update operands] (fastmaml/ops/operands.py); its forms and maths: NOTE: [update forms] in
// include/fastmaml/update.h.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fastmaml, m) {
  // out[i] = gammas[i] * params[i] - alpha * lrs[i] * grads[i]; fresh contiguous outputs.
  m.def("fused_update(Tensor[] params, Tensor[] grads, Tensor[]? lrs, Tensor[]? gammas, float alpha)"
        " -> Tensor[]");
  // The same update written into params (not differentiable).
  m.def("fused_update_(Tensor(a!)[] params, Tensor[] grads, Tensor[]? lrs, Tensor[]? gammas,"
        " float alpha) -> ()");
  // One pass computing the gradients selected by output_mask = (params, grads, lrs, gammas); lists
  // not selected come back empty. Gradients for lrs and gammas have params' shapes: the caller
  // reduces them to the shapes of lrs and gammas.
  m.def("fused_update_backward(Tensor[] grad_outputs, Tensor[] params, Tensor[] grads, Tensor[]? lrs,"
        " Tensor[]? gammas, float alpha, bool[4] output_mask)"
        " -> (Tensor[], Tensor[], Tensor[], Tensor[])");

  // The stateful forms, one op per update: NOTE: [moment forms] in include/fastmaml/update.h.
  // The update's operands (params, grads, lrs, alpha: NOTE: [update operands]) and the state m, v,
  // b; hyper = (wd, b1, c1, b2, c2, s1, s2, eps_in, eps, mu, c, keep, dd); flags = 1 adam + 2
  // centered + 4 nesterov + 8 direction. Returns (params' or the direction, m', v', b'), a state
  // list that is None not used and coming back empty. Differentiable through
  // fastmaml/ops/moments/native.py (its backward: fused_moments_backward, or torch ops when the
  // backward itself must be differentiable).
  m.def("fused_moments(Tensor[] params, Tensor[] grads, Tensor[]? lrs, Tensor[]? m, Tensor[]? v,"
        " Tensor[]? b, float alpha, float[] hyper, int flags) -> (Tensor[], Tensor[], Tensor[], Tensor[])");
  m.def("fused_moments_backward(Tensor[]? grad_out, Tensor[]? grad_m, Tensor[]? grad_v,"
        " Tensor[]? grad_b, Tensor[] params, Tensor[] grads, Tensor[]? lrs, Tensor[]? m, Tensor[]? v,"
        " Tensor[]? b, float alpha, float[] hyper, int flags, bool[6] output_mask)"
        " -> (Tensor[], Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])");

  // ---- batched conjugate gradient (issue 5): NOTE: [cg ops] in include/fastmaml/cg.h ----------
  // Lists of [T, ...] tensors; the per-task results are [T] opmath tensors. Not differentiable.
  m.def("cg_dot(Tensor[] a, Tensor[] b) -> Tensor");
  m.def("cg_matvec_dot_(Tensor(a!)[] hp, Tensor[] p, float c0, float c1) -> Tensor");
  m.def("cg_step_(Tensor(a!)[] x, Tensor(b!)[] r, Tensor[] p, Tensor[] q, Tensor alpha) -> Tensor");
  m.def("cg_direction_(Tensor(a!)[] p, Tensor[] r, Tensor beta) -> ()");

  // ---- the Linear/ReLU chain: NOTE: [chain maths] in chain.cpp ------------------------------------
  // layers[l] = 1 if layer l has a bias, + 2 if a ReLU follows it. The per-task support losses [T]
  // and their gradients w.r.t. the parameters (gradient order); backward: the Hessian-vector
  // product plus the losses' own term.
  m.def("chain_loss_and_grad(Tensor x, Tensor y, Tensor[] weights, Tensor?[] biases, int[] layers)"
        " -> (Tensor losses, Tensor[] grads)");
  // The per-task query losses [T]; backward: their gradients scaled per task.
  m.def("chain_loss(Tensor x, Tensor y, Tensor[] weights, Tensor?[] biases, int[] layers) -> Tensor");
}

// `import fastmaml._C` loads this library, which registers the operators above. The module itself
// only says whether the CUDA kernels were compiled in (setup.py builds the CPU-only variant when
// it cannot build them).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
#ifdef FASTMAML_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (module != nullptr && PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
