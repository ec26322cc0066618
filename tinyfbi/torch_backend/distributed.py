"""Scale-out on torch.distributed: one process per GPU under torchrun, replicated (DDP) or sharded (FSDP2).

    torchrun --nproc-per-node=8 -m tinyfbi.train --backend torch --size 7b --teacher Llama-2-7b-hf

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them the torch backend runs as one process.
NCCL on GPUs (with gloo beside it for CPU tensors, which CPU offload uses), gloo on a CPU. Small
models are replicated with DDP; large ones are sharded with FSDP2 (`fully_shard`), one unit per
decoder layer plus the root (embeddings, final norm, lm_head), like the paper's FSDP recipe.

Every rank takes its own rows of the same global batch, so the global batch, and the loss, equal the
single-process run's. Parameters and optimizer state move between ranks one full tensor at a time:
rank 0 reads a checkpoint and scatters it (`put_full`), and gathers each tensor to write one
(`get_full`), so a sharded run's checkpoint is the ordinary single-file checkpoint.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from ..core.errors import TinyFBIError

FSDP_AUTO_PARAMS = 1_000_000_000  # --fsdp auto shards models of 1B parameters and up (1.3b, 7b, 13b)
TIMEOUT = timedelta(minutes=60)    # rank 0 alone initializes or reads a 13B checkpoint: others wait
LAUNCHER_GONE = 70                 # exit status of a worker whose torchrun agent died (EX_SOFTWARE)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    grouped: bool = False  # a process group exists (torchrun, or FSDP in a single process)
    cpu_bf16: bool = False  # bf16 autocast on a CPU too (rehearsing the GPU numerics; --cpu-bf16)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.grouped:
            dist.barrier()

    def all_reduce_sum(self, values) -> list[float]:
        """Sums of a few floats over all ranks, in float64 (losses, token counts, flip counts)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.grouped and self.world_size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj):
        """Rank 0's picklable obj on every rank."""
        if self.grouped and self.world_size > 1:
            box = [obj]
            dist.broadcast_object_list(box, 0)
            return box[0]
        return obj

    def on_main(self, fn):
        """fn() on rank 0 alone (None elsewhere); a TinyFBIError there is raised on every rank, so no
        rank waits for a collective that will never come."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except TinyFBIError as e:
                error = str(e)
        error = self.broadcast_object(error)
        if error is not None:
            raise TinyFBIError(error)
        return result

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of n rows (n divisible by world_size)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def setup(force_group=False) -> Dist:
    """Read torchrun's environment; start a process group if there are several ranks (or if asked:
    FSDP and CPU offload need one even in a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise TinyFBIError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    d = Dist(rank, world, local_rank, device)
    if "TORCHELASTIC_RUN_ID" in os.environ:   # started by torchrun: do not outlive it
        watch_launcher(rank)
    if world > 1 or force_group:
        backend = "cuda:nccl,cpu:gloo" if cuda else "gloo"
        if world == 1 and "MASTER_ADDR" not in os.environ:  # one process, no torchrun: an in-memory store
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=TIMEOUT)
        else:
            dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if cuda else None)
        d.grouped = True
    return d


def watch_launcher(rank: int, interval: float = 0.1):
    """Exit at once when torchrun's agent dies. A worker whose launcher is gone would otherwise go on
    training and writing checkpoints (each worker has a process group of its own, so killing the
    agent does not reach it), or wait in a collective for its full timeout. The agent is the
    worker's parent; when it dies the worker is re-parented, which a thread sees within `interval`.
    os._exit skips every handler: no checkpoint is half written by this rank (checkpoints are
    swapped in whole), and the kernel drops the run folder's lock with the process."""
    launcher = os.getppid()

    def watch():
        while os.getppid() == launcher:
            time.sleep(interval)
        print(f"rank {rank}: torchrun's agent (pid {launcher}) is gone; exiting", file=sys.stderr, flush=True)
        os._exit(LAUNCHER_GONE)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def teardown(d: Dist):
    if d.grouped and dist.is_initialized():
        dist.destroy_process_group()


def use_fsdp(mode: str, num_params: int, world_size: int, cpu_offload: bool) -> bool:
    """--fsdp auto: shard when there are several ranks and the model has 1B parameters or more."""
    if mode == "on" or cpu_offload:
        return True
    if mode == "off":
        return False
    return world_size > 1 and num_params >= FSDP_AUTO_PARAMS


def shard(model, d: Dist, cpu_offload=False, param_dtype=None):
    """FSDP2: one unit per decoder layer, then the root; parameters become DTensors sharded on dim 0.
    param_dtype (bf16 on GPUs) is what the all-gathered weights and the compute use; gradients are
    reduced in float32 and the sharded master weights stay float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )
    mesh = init_device_mesh(d.device.type, (d.world_size,))
    kw = {"mesh": mesh, "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def replicate(model, d: Dist):
    """DDP for small models: gradients averaged over ranks in buckets during the backward."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
               gradient_as_bucket_view=True)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds (all of it unless it is a sharded DTensor)."""
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def put_full(dst: torch.Tensor, src, d: Dist):
    """Write the full tensor `src` (read on rank 0; ignored elsewhere) into `dst` on every rank:
    a sharded dst gets its shard, a replicated one a copy."""
    if d.is_main:
        full = torch.as_tensor(np.ascontiguousarray(src) if isinstance(src, np.ndarray) else src)
        if tuple(full.shape) != tuple(dst.shape):
            raise TinyFBIError(f"tensor of shape {tuple(full.shape)} does not fit a parameter of shape "
                               f"{tuple(dst.shape)}")
        full = full.to(device=d.device, dtype=dst.dtype)
    else:
        full = torch.empty(dst.shape, dtype=dst.dtype, device=d.device)
    if isinstance(dst, DTensor):  # scatter from rank 0 and keep this rank's shard
        dst.to_local().copy_(distribute_tensor(full, dst.device_mesh, dst.placements).to_local())
        return
    if d.grouped and d.world_size > 1:
        dist.broadcast(full, 0)
    dst.copy_(full)


@torch.no_grad()
def get_full(t: torch.Tensor, d: Dist) -> np.ndarray | None:
    """The full tensor as float32 NumPy on rank 0 (None elsewhere). Every rank must call it, in the
    same order: a sharded tensor is all-gathered."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    return full.detach().float().cpu().numpy() if d.is_main else None
