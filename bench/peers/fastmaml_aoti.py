"""fastmaml's compiled meta-step compiled ahead of time: fastmaml.compile(MAML(model), backend="aoti")
(fastmaml/execution/aoti.py), then meta_backward(...) as bench/peers/fastmaml_compiled.py. Its first
call per shape pays the compilation (AOTInductor's C++ build), unless the package is on disk already."""

from __future__ import annotations

import functools

from bench.peers import fastmaml_compiled as compiled

NAME = "fastmaml compiled (AOTI)"
available, version = compiled.available, compiled.version
make = functools.partial(compiled.make, backend="aoti")
