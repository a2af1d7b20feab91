"""Data-parallel training: several processes, each on its own batches, averaging gradients every step.

`torchrun --nproc-per-node N -m slm_lab.train --preset tiny` (or `slm-lab train --nproc N`) starts N copies
of the training script. torchrun gives each its RANK, LOCAL_RANK and WORLD_SIZE and a rendezvous address
(MASTER_ADDR:MASTER_PORT) where they meet; `init` joins the group over `gloo` (CPU) or `nccl` (GPUs).
In `train()`, rank r draws micro-batches r·A … r·A + A − 1 of each step (A = grad_accum), so N ranks see
exactly the batches one process with grad_accum N·A would, and after the backward pass
`average_gradients` all-reduces every gradient and divides by N — what DistributedDataParallel does, in
buckets overlapped with the backward pass. Only rank 0 validates, shows progress and writes checkpoints.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist

from .errors import SLMLabError

RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that validates, prints and saves."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device: str | None = None) -> torch.device:
    """Join the process group torchrun set up (a no-op for a single process); returns this rank's device:
    cuda:LOCAL_RANK with nccl when GPUs are there (or asked for), else the CPU with gloo and an equal share
    of its cores."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    missing = [v for v in RENDEZVOUS if not os.environ.get(v)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise SLMLabError(f"WORLD_SIZE is set but {' and '.join(missing)} {verb} not: start the ranks with "
                          "torchrun (it sets the rendezvous address), or set MASTER_ADDR and MASTER_PORT yourself.")
    local, n_local = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    gpu = torch.cuda.is_available() and device != "cpu"
    if gpu:
        torch.cuda.set_device(local)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_local))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    return torch.device(f"cuda:{local}") if gpu else torch.device("cpu")


def rank_micro_batches(rank: int, grad_accum: int) -> list[int]:
    """The micro-batch indices rank `rank` draws in every step: rank·A … rank·A + A − 1 (A = grad_accum), so
    N ranks together draw micro-batches 0 … N·A − 1, each once — one process with grad_accum N·A."""
    return list(range(rank * grad_accum, (rank + 1) * grad_accum))


def average_gradients(params: Iterable[torch.nn.Parameter], n: int | None = None) -> None:
    """Replace each gradient by its mean over the ranks: all-reduce (sum) in place, then divide by n."""
    n = n or world_size()
    if n == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(n)


def mean_over_ranks(value: float) -> float:
    """A Python number averaged over the ranks (the step's loss, so rank 0 logs the global one)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / world_size()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights (DDP does this when it wraps a model)."""
    if world_size() > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (torchrun's ranks exit cleanly)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_nproc(nproc: int, device: str | None = None) -> None:
    """One line when nproc asks for more processes than this machine has devices (GPUs) or cores (CPU)."""
    if nproc < 1:
        raise SLMLabError(f"--nproc {nproc} must be at least 1.")
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if gpus and nproc > gpus:
        raise SLMLabError(f"--nproc {nproc} asks for more processes than the {gpus} GPU(s) here; use at most {gpus}.")
    cores = os.cpu_count() or 1
    if not gpus and nproc > cores:
        raise SLMLabError(f"--nproc {nproc} asks for more processes than the {cores} CPU cores here; use at most "
                          f"{cores} (on one machine, data parallelism needs a core or a GPU per process).")


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The single-machine torchrun command that runs `slm-lab train` with train_args on nproc processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "slm_lab.train", *train_args]


def launch(nproc: int, train_args: list[str]) -> int:
    """Run torchrun_command and return its exit status (its ranks print to this terminal)."""
    return subprocess.call(torchrun_command(nproc, train_args))
