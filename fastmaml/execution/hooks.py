"""The hooks of a learner, and which of them each execution mode computes its own way.

A learner (fastmaml/algorithms/base.py) changes the meta-step only through these hooks. Its class
records the ones it overrides in `overridden_hooks` (MetaLearner.__init_subclass__), so this layer
never imports the learner's class: it reads that set. A mode that computes a hook's work its own way
(the task-batched layers compute `task_forward` for all tasks at once, the hvp mode differentiates
the plain update by hand) cannot run a learner that overrides it; `why_not` says so in words, and
`fastmaml.execution.explain(learner)` lists every mode with its reason.
"""

from __future__ import annotations

from fastmaml.execution.learner import Learner

HOOKS = ("inner_rates", "inner_gammas", "is_first_order", "task_forward", "support_loss", "query_loss",
         "task_loss", "inner_loop")
# What `overridden_hooks` records: the hooks, and meta_loss (a learner with its own, iMAML, never
# reaches the modes: fastmaml.compile must refuse it rather than set a mode it would ignore)
RECORDED = HOOKS + ("meta_loss",)

# The hooks each mode replaces (so they must keep their default). `inner_rates` is taken by every
# mode: rates are per parameter, never per task, and broadcast over a task dimension.
REPLACED = {
    "loop": (),
    "vmap": (),
    "batched": ("task_forward", "inner_gammas", "support_loss", "query_loss", "task_loss", "inner_loop"),
    "hvp": ("inner_gammas", "task_loss", "is_first_order", "inner_loop"),
    "compiled": ("meta_loss",),
}


def overridden(learner: Learner, mode: str) -> list[str]:
    """The hooks `learner` overrides that `mode` replaces."""
    own: frozenset[str] = getattr(learner, "overridden_hooks", frozenset())
    return [h for h in REPLACED[mode] if h in own]


def why_not(learner: Learner, mode: str) -> str | None:
    """Why `learner`'s hooks keep it off `mode` (None when they do not)."""
    if mode in ("hvp", "compiled") and getattr(learner, "inner_optimizer", None) is not None:
        return f"the {mode!r} mode differentiates the plain SGD update only, not inner_optimizer={learner.inner_optimizer!r}"
    bad = overridden(learner, mode)
    if not bad:
        return None
    return f"{type(learner).__name__} overrides {', '.join(bad)}, which the {mode!r} mode computes its own way"
