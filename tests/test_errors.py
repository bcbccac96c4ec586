"""Bad input gets an error naming the argument and what was expected."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from tests.models import regression_tasks, tiny_mlp


@pytest.fixture
def maml():
    return fastmaml.MAML(tiny_mlp(), inner_lr=0.1)


def test_task_counts_differ(maml):
    sx, sy, qx, qy = regression_tasks()
    with pytest.raises(ValueError, match="same number of tasks"):
        maml.meta_loss(sx, sy, qx[:2], qy[:2], F.mse_loss)


def test_x_y_length_mismatch(maml):
    sx, sy, qx, qy = regression_tasks()
    with pytest.raises(ValueError, match="support_x has 5 examples per task but support_y has 4"):
        maml.meta_loss(sx, sy[:, :4], qx, qy, F.mse_loss)
    with pytest.raises(ValueError, match="query_x has 6 examples per task but query_y has 2"):
        maml.meta_loss(sx, sy, qx, qy[:, :2], F.mse_loss)
    with pytest.raises(ValueError, match="support_x has 5 examples but support_y has 4"):
        maml.adapt(sx[0], sy[0, :4], F.mse_loss)



def test_checks_after_an_accepted_batch(maml):
    # check_batch remembers the last batch it accepted; whatever changed since must be checked again
    sx, sy, qx, qy = regression_tasks()
    maml.meta_loss(sx, sy, qx, qy, F.mse_loss)
    assert maml.execution_state.batch_accepted is not None  # else this test checks nothing new
    with pytest.raises(ValueError, match="query_x has 6 examples per task but query_y has 2"):
        maml.meta_loss(sx, sy, qx, qy[:, :2], F.mse_loss)
    maml.meta_loss(sx, sy, qx, qy, F.mse_loss)
    maml.example_rank = 2
    with pytest.raises(ValueError, match="from learner.example_rank"):
        maml.meta_loss(sx, sy, qx, qy, F.mse_loss)
    maml.example_rank = None
    maml.meta_loss(sx, sy, qx, qy, F.mse_loss)
    maml.module.float()
    with pytest.raises(ValueError, match="support_x has dtype torch.float64 but the model.s parameters are torch.float32"):
        maml.meta_loss(sx, sy, qx, qy, F.mse_loss)

def test_empty_support(maml):
    sx, sy, qx, qy = regression_tasks()
    with pytest.raises(ValueError, match="support set is empty"):
        maml.meta_loss(sx[:, :0], sy[:, :0], qx, qy, F.mse_loss)
    with pytest.raises(ValueError, match="support set is empty"):
        maml.adapt(sx[0, :0], sy[0, :0], F.mse_loss)


def test_missing_task_dimension(maml):
    sx, sy, qx, qy = regression_tasks()
    with pytest.raises(ValueError, match="support_y must have a leading task dimension"):
        maml.meta_loss(sx, sy[0, 0], qx, qy, F.mse_loss)


def test_non_floating_params():
    model = nn.Linear(2, 1)
    model.weight = nn.Parameter(torch.ones(1, 2, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match="'weight' has dtype torch.int64"):
        fastmaml.MAML(model)


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_bad_inner_lr(lr):
    with pytest.raises(ValueError, match="inner_lr must be a finite number >= 0"):
        fastmaml.MAML(tiny_mlp(), inner_lr=lr)


def test_bad_inner_steps_and_batching():
    with pytest.raises(ValueError, match="inner_steps must be an int >= 0"):
        fastmaml.MAML(tiny_mlp(), inner_steps=-1)
    with pytest.raises(ValueError, match="batching must be one of"):
        fastmaml.MAML(tiny_mlp(), batching="threads")


def test_adapt_names_matching_nothing():
    with pytest.raises(ValueError, match="adapt_names: 'head' matches no parameter"):
        fastmaml.MAML(tiny_mlp(), adapt_names=["head"])


def test_bad_reduction(maml):
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        maml.meta_loss(*regression_tasks(), F.mse_loss, reduction="max")


def test_inner_update_shape_mismatch_names_the_param():
    params = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    grads = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    with pytest.raises(ValueError, match=r"grads\[1\] \('b'\) has shape \[2\] but params\[1\] \('b'\) has \[3\]"):
        fastmaml.inner_update(params, grads, 0.1)


def test_inner_update_nan_lr():
    with pytest.raises(ValueError, match="lr must be finite"):
        fastmaml.inner_update({"w": torch.randn(2)}, {"w": torch.randn(2)}, float("nan"))
