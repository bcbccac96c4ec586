"""Meta-training: MetaTrainer, evaluation with confidence intervals, checkpoints, metrics, plots."""

from fastmaml.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastmaml.train.evaluate import evaluate
from fastmaml.train.metrics import MetricsLogger, mean_ci95
from fastmaml.train.registry import ALGORITHMS, AlgorithmUnavailable, algorithm_class, build_learner
from fastmaml.train.trainer import MetaTrainer, TrainingDiverged

__all__ = [
    "MetaTrainer", "TrainingDiverged", "evaluate",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
    "MetricsLogger", "mean_ci95",
    "ALGORITHMS", "AlgorithmUnavailable", "algorithm_class", "build_learner",
]
