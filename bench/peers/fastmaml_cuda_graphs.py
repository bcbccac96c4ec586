"""fastmaml's compiled meta-step replayed as CUDA graphs: fastmaml.compile(MAML(model), cuda_graphs=True),
then meta_backward(...) as bench/peers/fastmaml_compiled.py. On the CPU it is that peer (Inductor
declines CUDA graphs there), so it runs in bench/gpu's configs only."""

from __future__ import annotations

import functools

from bench.peers import fastmaml_compiled as compiled

NAME = "fastmaml compiled, CUDA graphs"
available, version = compiled.available, compiled.version
make = functools.partial(compiled.make, cuda_graphs=True)
