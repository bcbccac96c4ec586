"""What the execution layer learns about one learner at run time. Nothing here is a setting (the
settings, batching, second_order, ..., are the learner's constructor arguments), except what
`fastmaml.compile` sets: the compiled step's backend and the horizon auto weighs it by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompileChoice:
    """Auto's choice between "compiled" and the eager mode for one batch signature, with its reasons
    (NOTE: [auto compiled] in fastmaml/execution/auto.py).

    Attributes:
        mode: the mode chosen.
        eager: the eager mode it was weighed against ("batched", "vmap" or "loop").
        horizon: the meta-steps expected per batch signature (`fastmaml.compile(expected_steps=)`).
        eager_s: seconds of an eager meta-step (None: not timed).
        compiled_s: seconds of a compiled meta-step (None: not compiled).
        compile_s: seconds the compilation took (0: compiled before; None: not compiled).
        reason: the decision in words.
    """
    mode: str
    eager: str
    horizon: int
    eager_s: float | None = None
    compiled_s: float | None = None
    compile_s: float | None = None
    reason: str = ""


@dataclass
class ExecutionState:
    """What the execution layer learns about one learner at run time (`learner.execution_state`).

    Attributes:
        used: the mode the last meta-step ran in ("batched", "vmap", "loop", ...).
        auto_choice: "auto": the measured choice per batch signature.
        map_mode: hvp mode and iMAML: "vmap" or "loop", once "auto" found which runs.
        hvp_method: the HVP method "auto" resolved to (NOTE: [hvp methods]).
        compiled: "compiled": the compiled steps (execution/compiled.py).
        compile_backend: torch.compile's backend for "compiled" (fastmaml.compile sets it).
        compile_cuda_graphs: whether "compiled" replays its graph as CUDA graphs (fastmaml.compile
            sets it).
        compile_horizon: the meta-steps expected per batch signature, by which "auto" weighs
            "compiled" (`fastmaml.compile(learner, expected_steps=N)` sets it; None: never).
        compile_choice: "auto" with a horizon: its `CompileChoice` per batch signature.
        last_compile_choice: the `CompileChoice` of the last meta-step "auto" weighed.
        compile_seconds: the seconds each compilation "auto" paid took.
        example_rank_seen: NOTE: [example rank] (fastmaml/checks.py), when the model cannot tell.
        batch_accepted: the signature of the last batch `check_batch` accepted (fastmaml/checks.py).
    """
    used: str | None = None
    auto_choice: dict = field(default_factory=dict)
    map_mode: str | None = None
    hvp_method: str | None = None
    compiled: dict = field(default_factory=dict)
    compile_backend: str | Callable[..., Any] = "inductor"
    compile_cuda_graphs: bool = False
    compile_horizon: int | None = None
    compile_choice: dict[tuple, CompileChoice] = field(default_factory=dict)
    last_compile_choice: CompileChoice | None = None
    compile_seconds: list[float] = field(default_factory=list)
    example_rank_seen: int | None = None
    batch_accepted: tuple | None = None
