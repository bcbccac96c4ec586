"""A job one of whose ranks fails: `python _fail.py raise|hang|stop|kill`, run by torchrun or with the
torch.distributed environment set by hand. Rank 0 keeps meta-training (all-reducing every step);
rank 1 raises at its second step ("raise"), stops answering ("hang": its threads still run), is
frozen whole by SIGSTOP ("stop") or killed by SIGKILL ("kill")."""

import os
import signal
import sys
import time

import torch
import torch.nn.functional as Fn

from fastmaml import MAML, distributed
from fastmaml.tasks.sine import SineTasks, sine_mlp

mode = sys.argv[1]
ctx = distributed.init_from_env("cpu")  # timeout from $FASTMAML_DIST_TIMEOUT
torch.manual_seed(0)
maml = MAML(sine_mlp(hidden=8), inner_lr=0.01, batching="loop", first_order=True)
tasks = SineTasks(k_shot=2, q_query=2, seed=0)
for step in range(1000):
    if ctx.rank == 1 and step == 1:
        if mode == "raise":
            raise RuntimeError("injected failure on rank 1")
        if mode in ("stop", "kill"):
            os.kill(os.getpid(), signal.SIGSTOP if mode == "stop" else signal.SIGKILL)
        time.sleep(600)
    ctx.meta_step(maml, ctx.shard(tasks.sample(4)), Fn.mse_loss)
print("rank", ctx.rank, "finished without noticing the failure")
