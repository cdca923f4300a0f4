"""torch.distributed wiring for ``torchrun --nproc-per-node K -m smoothguard ...``.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; we start the
process group from them (gloo on CPU, nccl on CUDA) and pin each rank to its local GPU.
A plain ``smoothguard`` run sees WORLD_SIZE unset and stays single-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from smoothguard.contract import ContractError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: str, minimum: int) -> int:
    text = os.environ.get(name, default)
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ContractError(f"environment variable {name}={text!r} must be an integer >= {minimum} (torchrun sets "
                            "it; unset it for a single-process run)")
    return value


def world_from_env() -> World:
    size = _env_int("WORLD_SIZE", "1", 1)
    if size <= 1:
        return World()
    rank = _env_int("RANK", "0", 0)
    if rank >= size:
        raise ContractError(f"environment variable RANK={rank} must be < WORLD_SIZE={size}")
    return World(rank, size, _env_int("LOCAL_RANK", "0", 0))


def init_distributed(device: torch.device) -> tuple[World, torch.device]:
    """Start the process group when launched by torchrun; returns the world and the rank's device."""
    import torch.distributed as dist

    world = world_from_env()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world, device


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # every rank reaches this point before any tears the group down: a rank that destroys
        # its gloo group while another still talks to it can abort at exit
        try:
            dist.barrier()
        except RuntimeError:  # a peer already gone (killed rank): nothing left to wait for
            pass
        dist.destroy_process_group()
