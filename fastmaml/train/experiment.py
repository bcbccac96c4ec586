"""An experiment from a plain config dict (what `fastmaml train` saves in config.json and in every
checkpoint): the model, the learner, the task samplers, the loss and the metric.

Paper defaults (Finn et al., 2017, section 5 and appendix A):
  sine:          MLP 1-40-40-1 (ReLU), K=10 support and 10 query points, meta-batch 25, alpha 0.01,
                 1 inner step, Adam beta 1e-3, 70,000 iterations.
  omniglot 5-way:  Conv-4, alpha 0.4, 1 inner step in training and 3 at test time, meta-batch 32,
                 Adam 1e-3, 60,000 iterations.
  omniglot 20-way: Conv-4, alpha 0.1, 5 inner steps in training and at test time, meta-batch 16.
The paper does not give the query size; we use 15 query images per class for Omniglot (the MAML
code used K) and 10 query points for sine (as the MAML code). The paper does not augment images;
`augment_shift/rotate/scale` (RandomAffine, meta-training episodes only) are off by default.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.algorithms.base import MetaLearner
from fastmaml.execution import compiled
from fastmaml.functional import LossFn
from fastmaml.models import conv4, mlp
from fastmaml.tasks.augment import RandomAffine
from fastmaml.tasks.omniglot import load_split
from fastmaml.tasks.sampler import FewShotSampler
from fastmaml.tasks.sine import SineTasks
from fastmaml.train.registry import build_learner

TASKS = ("sine", "omniglot")

COMMON: dict[str, Any] = {
    "algo": "maml", "first_order": False, "meta_optimizer": "adam", "meta_lr": 1e-3, "seed": 0,
    "eval_every": 1000, "eval_tasks": 600, "batching": "auto", "compile": None, "grad_clip": None,
    "data_root": None, "cache_dir": None, "omniglot_split": "small", "device": "cpu",
}
# config "compile": fastmaml.compile's arguments (None: the eager modes, by "batching")
COMPILE: dict[str, dict[str, Any]] = {"inductor": {}, "aoti": {"backend": "aoti"}, "cuda-graphs": {"cuda_graphs": True}}
AUGMENT_KEYS = ("augment_shift", "augment_rotate", "augment_scale")  # RandomAffine's shift, rotate, scale
SINE: dict[str, Any] = {"k_shot": 10, "q_query": 10, "meta_batch": 25, "inner_lr": 0.01, "inner_steps": 1,
        "eval_inner_steps": 1, "iterations": 70000}
OMNIGLOT: dict[int, dict[str, Any]] = {
    5: {"n_way": 5, "k_shot": 1, "q_query": 15, "meta_batch": 32, "inner_lr": 0.4, "inner_steps": 1,
        "eval_inner_steps": 3, "iterations": 60000},
    20: {"n_way": 20, "k_shot": 1, "q_query": 15, "meta_batch": 16, "inner_lr": 0.1, "inner_steps": 5,
         "eval_inner_steps": 5, "iterations": 60000},
}
# Reptile (Nichol et al., 2018) steps its own outer update: plain SGD on theta - mean phi with
# step size epsilon, several inner steps, trained on the support set only.
REPTILE: dict[str, dict[str, Any]] = {"sine": {"meta_optimizer": "sgd", "meta_lr": 0.1, "inner_lr": 0.02, "inner_steps": 5,
                    "eval_inner_steps": 5},
           "omniglot": {"meta_optimizer": "sgd", "meta_lr": 1.0, "inner_lr": 0.1, "inner_steps": 5,
                        "eval_inner_steps": 5}}


# Algorithms whose papers (and classes) use other inner settings on sine than MAML's.
SINE_ALGO: dict[str, dict[str, Any]] = {
    "cavia": {"inner_lr": 1.0},                                  # Zintgraf et al.: context lr 1.0
    "mamlpp": {"inner_steps": 5, "eval_inner_steps": 5},         # Antoniou et al.: 5 steps, LSLR
    "warpgrad": {"inner_steps": 5, "eval_inner_steps": 5,
                 "grad_clip": 10.0},                             # unclipped, it diverged (docs/results.md)
    "imaml": {"inner_steps": 30, "eval_inner_steps": 30},        # IMAML's defaults (docs/imaml.md)
}
# iMAML's inner loop on Conv-4: its own defaults (lam 5, CG damping 5, 30 steps of 0.01), not MAML's one step of 0.4.
OMNIGLOT_ALGO: dict[str, dict[str, Any]] = {"imaml": {"inner_lr": 0.01, "inner_steps": 30, "eval_inner_steps": 30}}
# CAVIA's context: 4 numbers, concatenated to the sine MLP's input, or to the input of Conv-4's
# linear head (the paper conditions Conv-4 by FiLM on a 100-number context; this is the simple form).
CAVIA_CONTEXT = 4


def defaults(task: str, n_way: int | None = None, algo: str = "maml") -> dict[str, Any]:
    """The defaults for a task (and N for Omniglot: 20-way has its own; others take 5-way's)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    cfg = {"task": task, **COMMON}
    if task == "sine":
        cfg.update(SINE)
    else:
        cfg.update(OMNIGLOT[20 if n_way is not None and n_way >= 20 else 5])
        if n_way is not None:
            cfg["n_way"] = n_way
    if algo == "reptile":
        cfg.update(REPTILE[task])
    elif task == "sine" and algo in SINE_ALGO:
        cfg.update(SINE_ALGO[algo])
    elif task == "omniglot" and algo in OMNIGLOT_ALGO:
        cfg.update(OMNIGLOT_ALGO[algo])
    cfg["algo"] = algo
    return cfg


@dataclass
class Experiment:
    config: dict
    learner: MetaLearner
    train_tasks: Any
    eval_tasks: Any
    loss_fn: Any
    metric: str

    def optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg["meta_optimizer"] == "adam":
            return torch.optim.Adam(self.learner.parameters(), lr=cfg["meta_lr"])
        if cfg["meta_optimizer"] == "sgd":
            return torch.optim.SGD(self.learner.parameters(), lr=cfg["meta_lr"])
        raise ValueError(f"meta_optimizer must be adam or sgd, got {cfg['meta_optimizer']!r}")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build(config: dict, eval_split: str = "test", need_train: bool = True) -> Experiment:
    """Build an experiment; raises ValueError/LookupError/OmniglotError/SamplerError with a message
    fit for the command line when the config cannot work."""
    cfg = dict(config)
    seed_everything(cfg["seed"])
    context = CAVIA_CONTEXT if cfg["algo"] == "cavia" else 0
    extra: dict[str, Any] = {"num_context": CAVIA_CONTEXT} if context else {}
    model: nn.Module
    train: SineTasks | FewShotSampler | None
    evals: SineTasks | FewShotSampler
    loss_fn: LossFn
    if cfg["task"] == "sine":
        model = mlp(1 + context, 1, hidden=40, layers=2)
        train = SineTasks(cfg["k_shot"], cfg["q_query"], seed=cfg["seed"]) if need_train else None
        evals = SineTasks(cfg["k_shot"], cfg["q_query"], seed=cfg["seed"] + 1_000_003)
        loss_fn, metric = F.mse_loss, "mse"
    elif cfg["task"] == "omniglot":
        net = conv4(cfg["n_way"])
        if context:
            net.head = torch.nn.Linear(net.head.in_features + context, cfg["n_way"])
            extra["context_at"] = "head"
        model = net
        common = dict(root=cfg["data_root"], cache_dir=cfg["cache_dir"], download=cfg.get("download", False))
        train = None
        if need_train:
            data = load_split(cfg["omniglot_split"], "train", **common)
            augment = RandomAffine(*(cfg.get(key) or 0.0 for key in AUGMENT_KEYS))
            train = FewShotSampler(data.images, data.labels, cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                                   seed=cfg["seed"], name=f"Omniglot {cfg['omniglot_split']} meta-train",
                                   transform=augment or None)
        data = load_split(cfg["omniglot_split"], eval_split, **common)
        evals = FewShotSampler(data.images, data.labels, cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                               seed=cfg["seed"] + 1_000_003, name=f"Omniglot {cfg['omniglot_split']} meta-{eval_split}")
        loss_fn, metric = F.cross_entropy, "accuracy"
    else:
        raise ValueError(f"unknown task {cfg['task']!r}; choose from {', '.join(TASKS)}")
    device = torch.device(cfg.get("device") or "cpu")
    learner = build_learner(cfg["algo"], model.to(device), inner_lr=cfg["inner_lr"], inner_steps=cfg["inner_steps"],
                            first_order=cfg["first_order"], batching=cfg["batching"],
                            extra=cfg.get("algo_args"), **extra)
    if cfg.get("compile") is not None:
        compile_meta_step(learner, cfg["compile"])
    if train is not None and hasattr(train, "images"):
        train.images = train.images.to(device)
    if hasattr(evals, "images"):
        evals.images = evals.images.to(device)
    return Experiment(cfg, learner, train, evals, loss_fn, metric)


def compile_meta_step(learner: MetaLearner, choice: str) -> None:
    """fastmaml.compile(learner, ...) for the config's "compile" (a key of COMPILE); a ValueError
    says why a learner cannot take it."""
    if choice not in COMPILE:
        raise ValueError(f"compile must be one of {', '.join(COMPILE)}, got {choice!r}")
    if callable(getattr(learner, "meta_grad", None)):
        raise ValueError(f"--compile {choice}: {type(learner).__name__} steps its own outer update (meta_grad), "
                         f"which the compiled meta-step does not compute")
    why = compiled.supported(learner)
    if why is not None:
        raise ValueError(f"--compile {choice}: the compiled meta-step does not cover {type(learner).__name__}: {why}")
    compiled.compile(learner, **COMPILE[choice])
