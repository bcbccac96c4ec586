"""The torch.compile peer (bench/peers/torch_compile.py) compiled with mode="max-autotune-no-cudagraphs":
Inductor times its own GEMM templates against the library's per product (fastmaml.compile did until
its graph pass made that moot: fastmaml/execution/aoti.py, inductor_configs). What a user gets by adding
that one argument."""

from __future__ import annotations

from bench.peers import torch_compile

NAME = "torch.compile(torch.func), max-autotune"
available, version = torch_compile.available, torch_compile.version


def make(model, cfg):
    return torch_compile.make(model, cfg, mode="max-autotune-no-cudagraphs")
