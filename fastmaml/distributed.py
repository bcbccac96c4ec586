"""Task-parallel meta-training on torch.distributed (launched by torchrun; gloo on CPU, NCCL on GPU).

    ctx = distributed.init_from_env(device="cpu")      # a no-op context when WORLD_SIZE is unset or 1
    for it in range(iterations):
        shard = ctx.shard(tasks.sample(meta_batch))     # every rank draws the full batch, keeps its slice
        optimizer.zero_grad(set_to_none=True)
        loss = learner.meta_backward(*shard.tensors(), loss_fn)   # or learner.meta_grad(...) (Reptile)
        loss = ctx.all_reduce_grads(learner.parameters(), shard.weight, loss=float(loss),
                                    buffers=learner.buffers())
        optimizer.step()
        if ctx.is_main: log(loss)

`MetaTrainer(..., dist=ctx)` does exactly this; `torchrun --nproc_per_node=N -m fastmaml train ...`
sets it up. See docs/distributed.md for how this relates to DistributedDataParallel.

NOTE: [distributed sharding] Every rank samples the *whole* meta-batch from the same seeded stream
and keeps a contiguous slice (ranks < N % W get one task more). So the union of the ranks' tasks is
exactly the batch one process would draw, every rank's sampler stays in the same state (a checkpoint
written by rank 0 resumes every rank, under any world size) and no coordination is needed to keep
the slices disjoint. The cost is generating tasks that are thrown away: index draws and, for image
tasks, one gather of the batch's images -- small next to the inner loop.

NOTE: [distributed weighting] A rank's loss is the mean over its n_r tasks, so its meta-gradient is
(1/n_r) sum_r grad L_t. Scaling it by w_r = n_r / N before a SUM all-reduce gives
sum_r (n_r/N)(1/n_r) sum grad L_t = (1/N) sum_t grad L_t: the one-process mean, also when N does not
divide evenly. Reptile's theta - mean_r phi reduces the same way (the weights sum to 1), and so do
floating buffers (every mode keeps the mean over tasks of BatchNorm statistics: NOTE: [buffer
rule] in fastmaml/execution/buffers.py). Integer buffers (num_batches_tracked) count the batches
every task saw: each rank's increment over a meta-step is summed over ranks (`meta_step`).
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, cast, overload

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastmaml.algorithms.base import MetaLearner
from fastmaml.functional import LossFn
from fastmaml.tasks.sampler import TaskBatch

TIMEOUT_ENV = "FASTMAML_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default; evaluation on rank 0 holds the others this long at most
HEARTBEAT_ENV = "FASTMAML_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 60.0  # a peer silent this long is stalled: the job ends (NOTE: [stalled peer])
DEFAULT_BUCKET_MB = 25.0    # DDP's bucket_cap_mb


class DistributedError(RuntimeError):
    """A collective failed (a peer rank exited or timed out) or the launch environment is incomplete."""


def shard_bounds(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous slice of `total` tasks: sizes differ by at most one,
    the first total % world_size ranks taking the extra task. NOTE: [distributed sharding]"""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
    if total < world_size:
        raise ValueError(f"the meta-batch has {total} tasks but there are {world_size} ranks: "
                         f"every rank needs at least one task (--meta-batch >= {world_size})")
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass
class Shard:
    """This rank's slice of a batch of tasks: `tensors()` like the batch's, tasks [start, stop) of
    `total`, and `weight` = (stop - start) / total (NOTE: [distributed weighting])."""

    parts: tuple[Tensor, ...]
    start: int
    stop: int
    total: int
    batch: object = field(default=None, repr=False)  # the whole batch, for its other fields

    def tensors(self) -> tuple[Tensor, ...]:
        return self.parts

    @property
    def tasks(self) -> int:
        return self.stop - self.start

    @property
    def weight(self) -> float:
        return self.tasks / self.total

    support_x = property(lambda self: self.parts[0])
    support_y = property(lambda self: self.parts[1])
    query_x = property(lambda self: self.parts[2])
    query_y = property(lambda self: self.parts[3])


def _buckets(sizes: list[tuple[int, torch.dtype, torch.device]], cap_bytes: float) -> list[list[int]]:
    """Indices grouped into buckets of one dtype and device, in order, each at most `cap_bytes`
    unless a single tensor is larger (cap 0: one tensor a bucket)."""
    open_: dict[tuple, list[int]] = {}
    used: dict[tuple, int] = {}
    out: list[list[int]] = []
    for i, (numel, dtype, device) in enumerate(sizes):
        key = (dtype, device)
        nbytes = numel * dtype.itemsize
        if key in open_ and used[key] + nbytes > cap_bytes:
            out.append(open_.pop(key))
        if key not in open_:
            open_[key], used[key] = [], 0
        open_[key].append(i)
        used[key] += nbytes
    out.extend(open_.values())
    return out


class DistContext:
    """Where this process sits in the job: rank, world_size, local_rank, device, backend. With
    world_size 1 (no process group) every method is a no-op, so code written for N ranks runs
    unchanged in one process."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device: str | torch.device = "cpu",
                 backend: str | None = None, bucket_cap_mb: float = DEFAULT_BUCKET_MB) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device(device)
        self.backend = backend
        self.bucket_cap_mb = float(bucket_cap_mb)
        # cumulative time spent in (and bytes sent through) the gradient all-reduce
        self.stats = {"all_reduce_s": 0.0, "all_reduce_calls": 0, "all_reduce_bytes": 0, "buckets": 0}

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress, evaluates and writes checkpoints."""
        return self.rank == 0

    def __repr__(self) -> str:
        return (f"DistContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
                f"device={self.device}, backend={self.backend})")

    # ---- tasks -----------------------------------------------------------------------------------
    def shard(self, batch: TaskBatch | Sequence[Tensor]) -> Shard:
        """This rank's slice of `batch` (anything with `.tensors()`, or a tuple of tensors with a
        leading task dimension). NOTE: [distributed sharding]"""
        parts = tuple(batch.tensors() if hasattr(batch, "tensors") else batch)
        if not parts or not all(isinstance(t, Tensor) and t.dim() >= 1 for t in parts):
            raise TypeError("shard: batch must have .tensors() or be a tuple of tensors with a task dimension")
        total = parts[0].shape[0]
        sizes = [t.shape[0] for t in parts]
        if len(set(sizes)) != 1:
            raise ValueError(f"shard: the batch's tensors disagree on the number of tasks: {sizes}")
        start, stop = shard_bounds(total, self.world_size, self.rank)
        if self.world_size > 1:
            parts = tuple(t[start:stop] for t in parts)
        return Shard(parts, start, stop, total, batch)

    # ---- gradients -------------------------------------------------------------------------------
    @overload
    def all_reduce_grads(self, params: Iterable[Tensor], weight: float = 1.0, loss: None = None,
                         buffers: Iterable[Tensor] | None = None) -> None: ...

    @overload
    def all_reduce_grads(self, params: Iterable[Tensor], weight: float = 1.0, *, loss: float | Tensor,
                         buffers: Iterable[Tensor] | None = None) -> float: ...

    @overload
    def all_reduce_grads(self, params: Iterable[Tensor], weight: float, loss: float | Tensor,
                         buffers: Iterable[Tensor] | None = None) -> float: ...

    def all_reduce_grads(self, params: Iterable[Tensor], weight: float = 1.0, loss: float | Tensor | None = None,
                         buffers: Iterable[Tensor] | None = None) -> float | None:
        """Replace each parameter's `.grad` by sum over ranks of weight_r * grad_r, in coalesced
        buckets of about `bucket_cap_mb` (one async all-reduce each, awaited together). With
        weight = shard.weight this is the one-process meta-gradient (NOTE: [distributed weighting]).
        A parameter without a gradient on some rank counts as zero there; one without a gradient
        on every rank keeps `.grad = None` (so optimizers skip it, as in one process). Floating
        `buffers` are averaged with the same weights in the same pass. Returns sum_r weight_r *
        loss_r (the global mean loss) when `loss` is given."""
        params = [p for p in params if p.requires_grad]
        if loss is not None:
            loss = float(loss)
        if not self.enabled:
            return loss
        if not (isinstance(weight, (int, float)) and 0 < weight <= 1):
            raise ValueError(f"all_reduce_grads: weight must be in (0, 1], got {weight!r}")
        buffers = [b for b in (buffers or ()) if b.is_floating_point()]
        for i, p in enumerate(params):
            if p.grad is not None and p.grad.is_sparse:
                raise TypeError(f"all_reduce_grads: params[{i}] has a sparse gradient, which is not supported")
        targets = params + buffers
        sizes = [(t.numel(), t.dtype, t.device) for t in targets]
        start = time.perf_counter()
        buckets = _buckets(sizes, self.bucket_cap_mb * 2**20)
        # meta: which params have a gradient on this rank, then the loss; it rides at the end of a
        # float32/float64 bucket (multiplied by the weight with it: flags stay > 0, the loss becomes
        # weighted), so a step costs one collective per bucket and no extra one
        meta = [float(p.grad is not None) for p in params] + [loss or 0.0]
        host = next((k for k in reversed(range(len(buckets)))
                     if targets[buckets[k][0]].dtype in (torch.float32, torch.float64)), None)
        works, flats = [], []
        try:
            for k, idx in enumerate(buckets):
                parts = []
                for i in idx:
                    t = targets[i]
                    src = (t.grad if t.grad is not None else torch.zeros_like(t)) if i < len(params) else t
                    parts.append(src.detach().reshape(-1))
                if k == host:
                    parts.append(torch.tensor(meta, dtype=parts[0].dtype, device=parts[0].device))
                flat = torch.cat(parts).mul_(weight)
                works.append(dist.all_reduce(flat, async_op=True))
                flats.append((idx, flat))
            if host is None:
                flat = torch.tensor(meta, dtype=torch.float64, device=self.device).mul_(weight)
                works.append(dist.all_reduce(flat, async_op=True))
            for w in works:
                w.wait()
        except (RuntimeError, dist.DistBackendError) as err:
            raise DistributedError(f"rank {self.rank}/{self.world_size}: the meta-gradient all-reduce failed "
                                   f"(a peer rank probably exited or timed out; see its error): {err}") from err
        meta = (flats[host][1] if host is not None else flat)[-len(meta):].tolist()
        elapsed = time.perf_counter() - start
        for idx, flat in flats:
            offset = 0
            for i in idx:
                t = targets[i]
                seg = flat[offset: offset + t.numel()].view(t.shape)
                offset += t.numel()
                if i >= len(params):
                    with torch.no_grad():
                        t.copy_(seg)
                elif meta[i] == 0:
                    t.grad = None
                elif t.grad is not None:
                    t.grad.copy_(seg)
                else:
                    t.grad = seg.clone()
        self.stats["all_reduce_s"] += elapsed
        self.stats["all_reduce_calls"] += 1
        self.stats["all_reduce_bytes"] += sum(f.numel() * f.element_size() for _, f in flats)
        self.stats["buckets"] += len(works)
        return meta[-1] if loss is not None else None

    def meta_step(self, learner: MetaLearner, shard: Shard, loss_fn: LossFn) -> float:
        """Fill `.grad` of the learner's parameters with the global meta-gradient of `shard`'s batch
        (meta_backward(), i.e. meta_loss().backward(), or meta_grad() for learners with their own outer update such as
        Reptile) and return the global mean loss. Gradients already in `.grad` are overwritten."""
        for p in learner.parameters():
            p.grad = None
        counts = [(b, b.clone()) for b in learner.buffers() if not b.is_floating_point()]
        sx, sy, qx, qy = shard.tensors()
        meta_grad = getattr(learner, "meta_grad", None)
        if callable(meta_grad):
            loss = meta_grad(sx, sy, loss_fn)
        else:
            loss = learner.meta_backward(sx, sy, qx, qy, loss_fn)
        self._sum_counts(counts)
        return self.all_reduce_grads(learner.parameters(), shard.weight, loss=float(loss.detach()),
                                     buffers=learner.buffers())

    def _sum_counts(self, counts: list[tuple[Tensor, Tensor]]) -> None:
        """Integer buffers <- their value before the step + the sum over ranks of each rank's
        increment (the batches all ranks' tasks saw, as one process over the union counts)."""
        if not self.enabled or not counts:
            return
        delta = torch.cat([(b - before).reshape(-1) for b, before in counts]).to(torch.float64)
        try:
            dist.all_reduce(delta)
        except (RuntimeError, dist.DistBackendError) as err:
            raise DistributedError(f"rank {self.rank}/{self.world_size}: the buffer-count all-reduce failed "
                                   f"(a peer rank probably exited or timed out; see its error): {err}") from err
        offset = 0
        with torch.no_grad():
            for b, before in counts:
                n = b.numel()
                b.copy_(before + delta[offset: offset + n].view(b.shape).round().to(b.dtype))
                offset += n

    def outer_step(self, learner: MetaLearner, shard: Shard, loss_fn: LossFn, outer_lr: float) -> float:
        """The distributed form of a learner's own in-place outer step (Reptile.step): the global
        meta_grad() direction, then theta <- theta - outer_lr * direction through the fused
        fastmaml.ops.update_. Leaves `.grad` as it found it; returns the global mean loss."""
        from fastmaml import ops
        from fastmaml.checks import check_lr

        outer_lr = check_lr(outer_lr, "outer_lr")
        if not callable(getattr(learner, "meta_grad", None)):
            raise TypeError(f"outer_step needs a learner with meta_grad() (e.g. Reptile), got {type(learner).__name__}")
        saved = [(p, p.grad) for p in learner.parameters()]
        try:
            loss = self.meta_step(learner, shard, loss_fn)
            stepped = [(p, p.grad) for p, _ in saved if p.grad is not None]
            ops.update_([p for p, _ in stepped], [g for _, g in stepped], outer_lr)
        finally:
            for p, g in saved:
                p.grad = g
        return loss

    # ---- state -----------------------------------------------------------------------------------
    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Copy rank `src`'s parameters and buffers to every rank (as DDP does at construction), in
        coalesced buckets."""
        if not self.enabled:
            return
        tensors = [t for t in list(module.parameters()) + list(module.buffers())]
        sizes = [(t.numel(), t.dtype, t.device) for t in tensors]
        try:
            for idx in _buckets(sizes, self.bucket_cap_mb * 2**20):
                flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
                dist.broadcast(flat, src=src)
                offset = 0
                with torch.no_grad():
                    for i in idx:
                        n = tensors[i].numel()
                        tensors[i].copy_(flat[offset: offset + n].view(tensors[i].shape))
                        offset += n
        except (RuntimeError, dist.DistBackendError) as err:
            raise DistributedError(f"rank {self.rank}/{self.world_size}: broadcasting the model from rank {src} "
                                   f"failed: {err}") from err

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def destroy(self) -> None:
        """Leave the process group (idempotent)."""
        global _CURRENT
        if self.enabled:
            _stop_heartbeat()
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
        if _CURRENT is self:
            _CURRENT = None


# NOTE: [stalled peer] A rank that stops without exiting (SIGSTOP, a debugger, swapped out, a dead
# host whose TCP connections stay open) leaves the others blocked in a collective until the process
# group's timeout, which must exceed one evaluation on rank 0 (default 1800 s). So every rank also
# runs a heartbeat thread: it bumps its counter in the job's key-value store (torchrun's, hosted by
# the launcher) every few seconds and watches the others' counters; a peer whose counter has not
# moved for $FASTMAML_HEARTBEAT_TIMEOUT seconds (default 60; 0 turns the heartbeat off) is reported
# on stderr and this rank exits with status 1, so torchrun ends the job (the stalled rank gets
# SIGTERM, then SIGKILL). A thread keeps beating while its rank computes or evaluates; a rank that
# leaves normally (destroy() or interpreter exit) marks itself done and is no longer watched.
class Heartbeat:
    def __init__(self, store: dist.Store, rank: int, world_size: int, timeout: float,
                 interval: float | None = None) -> None:
        self.store = dist.PrefixStore("fastmaml/heartbeat/", store)
        self.rank, self.world_size, self.timeout = rank, world_size, float(timeout)
        self.interval = interval if interval is not None else min(5.0, self.timeout / 4)
        self._stop = threading.Event()
        self.store.add(f"beat{rank}", 1)
        self.thread = threading.Thread(target=self._run, name="fastmaml-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        peers = {r: (-1, time.monotonic()) for r in range(self.world_size) if r != self.rank}
        try:
            while not self._stop.wait(self.interval):
                self.store.add(f"beat{self.rank}", 1)
                now = time.monotonic()
                for r, (count, since) in list(peers.items()):
                    if self.store.check([f"done{r}"]):
                        del peers[r]
                        continue
                    beats = self.store.add(f"beat{r}", 0)
                    if beats != count:
                        peers[r] = (beats, now)
                    elif now - since > self.timeout and not self._stop.is_set():
                        self._fail(r, now - since)
        except Exception:  # the store is gone: the job is ending; the collectives' own timeout remains
            return

    def _fail(self, peer: int, silent: float) -> None:
        print(f"fastmaml.distributed: rank {self.rank} of {self.world_size}: rank {peer} has not answered for "
              f"{silent:.0f} s (stopped, hung, or its host is down; ${HEARTBEAT_ENV}={self.timeout:g}); this rank "
              f"exits so that the job ends", file=sys.stderr, flush=True)
        os._exit(1)  # the main thread may be blocked inside a collective: nothing else would return

    def stop(self) -> None:
        """This rank leaves normally: the others stop watching it (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.store.set(f"done{self.rank}", "1")
        except Exception:  # the store is already gone: the job is over
            pass


_CURRENT: DistContext | None = None
_HOOKED = False
_HEARTBEAT: Heartbeat | None = None


def _start_heartbeat(rank: int, world_size: int) -> None:
    global _HEARTBEAT
    timeout = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"${HEARTBEAT_ENV} must be a number of seconds >= 0 (0: off), got {timeout}")
    if timeout == 0 or _HEARTBEAT is not None:
        return
    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # no store to beat into: the collective timeout remains
        return
    _HEARTBEAT = Heartbeat(store, rank, world_size, timeout)
    atexit.register(_stop_heartbeat)


def _stop_heartbeat() -> None:
    global _HEARTBEAT
    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()
        _HEARTBEAT = None


def current() -> DistContext:
    """The context made by init_from_env() in this process, else a one-process context."""
    return _CURRENT if _CURRENT is not None else DistContext()


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(cast(str, value))  # None: the TypeError below
    except (TypeError, ValueError):
        raise DistributedError(f"environment variable {name} must be an integer, got {value!r}: launch with "
                               f"torchrun --nproc_per_node=N -m fastmaml train ...") from None


def _install_excepthook(rank: int, world_size: int) -> None:
    """Print one clear line naming the failed rank before the traceback; torchrun then stops the
    other ranks and exits non-zero (its failure propagation), so the job never hangs on it."""
    global _HOOKED
    if _HOOKED:
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            print(f"fastmaml.distributed: rank {rank} of {world_size} failed with {kind.__name__}: {value}; "
                  f"the job stops (the other ranks are terminated by the launcher)", file=sys.stderr, flush=True)
        previous(kind, value, tb)

    sys.excepthook = hook
    _HOOKED = True


def init_from_env(device: str | torch.device | None = None, backend: str | None = None,
                  timeout: float | None = None, bucket_cap_mb: float = DEFAULT_BUCKET_MB) -> DistContext:
    """Join the job torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) and return its context; WORLD_SIZE unset or 1 gives a one-process
    context and no process group. `device` "cuda" means this rank's GPU, cuda:LOCAL_RANK.
    The backend follows the device: NCCL for CUDA, gloo otherwise. `timeout` (seconds; default
    $FASTMAML_DIST_TIMEOUT or 1800) bounds every collective: a rank stuck longer fails the job.
    A peer that stops answering is detected sooner, by a heartbeat: NOTE: [stalled peer]."""
    global _CURRENT
    device = torch.device(device or "cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        _CURRENT = DistContext(device=device, bucket_cap_mb=bucket_cap_mb)
        return _CURRENT
    rank, local_rank = _env_int("RANK"), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing and not dist.is_initialized():
        raise DistributedError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset: launch with "
                               f"torchrun --nproc_per_node=N -m fastmaml train ...")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"rank {rank}: device {device} asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # so a plain "cuda" elsewhere means this rank's GPU
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout}")
    _install_excepthook(rank, world_size)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout),
                                **kwargs)
    _start_heartbeat(dist.get_rank(), dist.get_world_size())  # NOTE: [stalled peer]
    _CURRENT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend(),
                           bucket_cap_mb)
    return _CURRENT
