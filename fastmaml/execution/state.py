"""What the execution layer learns about one learner at run time. Nothing here is a setting: the
settings (batching, second_order, hvp_method, ...) are the learner's constructor arguments."""

from __future__ import annotations

from dataclasses import dataclass, field


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
        example_rank_seen: NOTE: [example rank] (fastmaml/checks.py), when the model cannot tell.
    """
    used: str | None = None       # the mode the last meta-step ran in ("batched", "vmap", "loop", ...)
    auto_choice: dict = field(default_factory=dict)  # "auto": the measured choice per batch signature
    map_mode: str | None = None   # hvp mode and iMAML: "vmap" or "loop", once "auto" found which runs
    hvp_method: str | None = None  # the HVP method "auto" resolved to (NOTE: [hvp methods])
    compiled: dict = field(default_factory=dict)  # "compiled": the compiled steps (execution/compiled.py)
    compile_backend: str = "inductor"  # torch.compile's backend for "compiled" (fastmaml.compile sets it)
    example_rank_seen: int | None = None  # NOTE: [example rank] (fastmaml/checks.py), when the model cannot tell
