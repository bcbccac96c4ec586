"""JAX written the way a JAX user writes MAML: the torch model translated once into a pure function
of a parameter dict, the one-task inner loop by jax.grad, all tasks by jax.vmap, the meta-gradient
by jax.grad of the mean query loss, the whole meta-step under one jax.jit. First order takes the
inner gradients at stop_gradient(parameters).

Weights and data cross over by DLPack (no copy on the same device), and the meta-gradient is written
back to the torch model's .grad, so the agreement check of bench_peers compares it like any peer's.
Float64 is enabled in JAX (jax_enable_x64) for that check; float32 inputs stay float32.

Translated modules: Sequential, Linear, Conv2d, BatchNorm2d with batch statistics
(track_running_stats=False, as fastmaml.models.Conv4 has it), ReLU, MaxPool2d, Flatten, and any
module made of `features` then `head` (fastmaml.models.MLP, Conv4); anything else is refused by name.
"""

from __future__ import annotations

import os

import torch

from bench.peers import zero_grads

NAME = "JAX jit+vmap"

# JAX would otherwise take 75% of the GPU's memory at its first array and starve torch.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def available():
    try:
        _jax()
    except ImportError as error:
        return f"not installed ({error}); bench/install_peers.sh installs it"
    return None


def version():
    jax = _jax()
    return f"{jax.__version__} ({jax.default_backend()})"


def _forward(module: torch.nn.Module, prefix: str = ""):
    """f(params, x): `module`'s forward in jax.numpy, params keyed by the torch parameter names."""
    jax = _jax()
    jnp, lax = jax.numpy, jax.lax
    nn = torch.nn
    if isinstance(module, nn.Sequential):
        parts = [_forward(child, f"{prefix}{name}.") for name, child in module.named_children()]

        def sequential(params, x):
            for part in parts:
                x = part(params, x)
            return x

        return sequential
    if isinstance(module, nn.Linear):
        w, b = prefix + "weight", prefix + "bias"
        has_bias = module.bias is not None
        return lambda params, x: x @ params[w].T + (params[b] if has_bias else 0)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise NotImplementedError(f"{prefix}: only Conv2d with groups=1 and numeric zero padding is translated")
        w, b = prefix + "weight", prefix + "bias"
        stride, dilation, padding = module.stride, module.dilation, [(p, p) for p in module.padding]
        has_bias = module.bias is not None

        def conv(params, x):
            y = lax.conv_general_dilated(x, params[w], stride, padding, rhs_dilation=dilation,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            return y + params[b][None, :, None, None] if has_bias else y

        return conv
    if isinstance(module, nn.BatchNorm2d):
        if module.track_running_stats:
            raise NotImplementedError(f"{prefix}: BatchNorm2d with running statistics is not translated "
                                      "(fastmaml.models.Conv4 uses track_running_stats=False)")
        w, b, eps, affine = prefix + "weight", prefix + "bias", module.eps, module.affine

        def batch_norm(params, x):
            mean = x.mean(axis=(0, 2, 3), keepdims=True)
            var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)  # biased, as torch normalises
            y = (x - mean) * lax.rsqrt(var + eps)
            return y * params[w][None, :, None, None] + params[b][None, :, None, None] if affine else y

        return batch_norm
    if isinstance(module, nn.ReLU):
        return lambda params, x: jnp.maximum(x, 0)
    if isinstance(module, nn.MaxPool2d):
        if module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)) or module.ceil_mode:
            raise NotImplementedError(f"{prefix}: only MaxPool2d without padding, dilation or ceil_mode is translated")
        k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        s = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        return lambda params, x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, *k), (1, 1, *s), "VALID")
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise NotImplementedError(f"{prefix}: only Flatten(1, -1) is translated")
        return lambda params, x: x.reshape(x.shape[0], -1)
    children = dict(module.named_children())
    if set(children) == {"features", "head"}:
        features, head = _forward(children["features"], prefix + "features."), _forward(children["head"], prefix + "head.")
        return lambda params, x: head(params, features(params, x))
    raise NotImplementedError(f"bench.peers.jax does not translate {type(module).__name__} ({prefix or 'the model'})")


def _loss(name: str):
    jax = _jax()
    jnp = jax.numpy
    if name == "mse":
        return lambda out, y: jnp.mean((out - y) ** 2)
    return lambda out, y: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out, axis=-1), y[:, None], axis=-1))


def make(model, cfg):
    jax = _jax()
    forward, loss = _forward(model), _loss(cfg.loss)

    def task_loss(params, xs, ys, xq, yq):
        phi = params
        for _ in range(cfg.steps):
            at = jax.lax.stop_gradient(phi) if cfg.first_order else phi
            grads = jax.grad(lambda p: loss(forward(p, xs), ys))(at)
            phi = jax.tree.map(lambda p, g: p - cfg.inner_lr * g, phi, grads)
        return loss(forward(phi, xq), yq)

    def meta_loss(params, xs, ys, xq, yq):
        return jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq).mean()

    meta_grad = jax.jit(jax.grad(meta_loss))
    named = list(model.named_parameters())
    last = []

    def inputs(batch):
        params = {n: jax.dlpack.from_dlpack(p.detach()) for n, p in named}
        return params, *(jax.dlpack.from_dlpack(t.contiguous()) for t in batch)

    def step(batch):
        zero_grads(model)
        grads = meta_grad(*inputs(batch))
        for n, p in named:
            p.grad = torch.from_dlpack(grads[n])
        last[:] = [grads]

    def memory_bytes(batch):
        """XLA's memory analysis of the compiled step: arguments + outputs + temporaries."""
        m = meta_grad.lower(*inputs(batch)).compile().memory_analysis()
        return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes

    step.sync = lambda: jax.block_until_ready(last)  # JAX's work runs on its own stream
    step.memory_bytes = memory_bytes
    step.meta_grad = meta_grad
    return step
