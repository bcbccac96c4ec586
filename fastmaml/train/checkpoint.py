"""Checkpoints: written atomically (temporary file + os.replace), read with
torch.load(weights_only=True), and carrying every random state a run draws from (torch CPU and
CUDA, numpy, python's random, each task sampler) so a resumed run continues bit-identically."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from fastmaml.tasks.omniglot import atomic_save
from fastmaml.tasks.sampler import TaskSource

FORMAT = "fastmaml-checkpoint"
VERSION = 1
REQUIRED = ("iteration", "learner", "config")  # what `fastmaml eval` needs; resuming needs the rest too
CONFIG_REQUIRED = ("task", "algo", "seed", "k_shot", "q_query", "inner_lr", "inner_steps", "eval_inner_steps")


class CheckpointError(Exception):
    """The checkpoint is missing, unreadable or not a fastmaml checkpoint."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (a temporary file, then a rename); returns the path.

    Args:
        state: what to save (a dict of tensors and plain values).
        path: the file to write.
    """
    path = Path(path)
    atomic_save({"format": FORMAT, "version": VERSION, **state}, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint; a run directory means its checkpoint.pt.

    Args:
        path: a checkpoint file or a run folder.
        map_location: torch.load's map_location.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch's unpickling errors run over many lines: the gist only
        gist = "it holds objects other than tensors and plain data (refused: loading them could run code)" \
            if isinstance(err, pickle.UnpicklingError) else " ".join(str(err).split())[:300]
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {type(err).__name__}: {gist}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a fastmaml checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {state.get('version')}, this fastmaml reads {VERSION}")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} is incomplete: it lacks {missing}")
    return state


def run_config(state: dict, path: str | os.PathLike) -> dict:
    """The `fastmaml train` config saved in a checkpoint, checked to hold what the commands read."""
    try:
        config = json.loads(state["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} holds an unreadable config ({err})") from None
    lacking = [key for key in CONFIG_REQUIRED if key not in config] if isinstance(config, dict) else CONFIG_REQUIRED
    if lacking:
        raise CheckpointError(f"{str(path)!r} was not written by `fastmaml train`: its config lacks {list(lacking)}")
    return config


def rng_state() -> dict:
    """The global random states, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": list(_to_lists(random.getstate())),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def sampler_state(sampler: TaskSource | None) -> dict | None:
    """The state of a task sampler: its state_dict(), else its `generator`'s state."""
    if sampler is None:
        return None
    if hasattr(sampler, "state_dict"):
        return sampler.state_dict()
    generator = getattr(sampler, "generator", None)
    if isinstance(generator, torch.Generator):
        return {"generator": generator.get_state()}
    return None


def load_sampler_state(sampler: TaskSource | None, state: dict | None) -> None:
    if sampler is None or state is None:
        return
    if hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(state)
    else:
        cast(Any, sampler).generator.set_state(state["generator"])  # what sampler_state saved
