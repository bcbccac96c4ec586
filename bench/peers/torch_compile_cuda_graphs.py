"""The torch.compile peer (bench/peers/torch_compile.py) compiled with mode="reduce-overhead":
Inductor's graph replayed as CUDA graphs, what a user would write on a GPU to cut launches. On the
CPU it is that peer (Inductor declines CUDA graphs there), so it runs in bench/gpu's configs only."""

from __future__ import annotations

import functools

from bench.peers import torch_compile

NAME = "torch.compile(torch.func), CUDA graphs"
available, version = torch_compile.available, torch_compile.version
make = functools.partial(torch_compile.make, mode="reduce-overhead")
