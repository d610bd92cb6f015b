"""torch.distributed for the harness: one process per device, launched by ``torchrun`` or by
RecBole's own ``nproc`` / ``world_size`` / ``ip`` / ``port`` / ``offset`` keys.

Backend: ``nccl`` when the process drives a GPU, ``gloo`` on CPUs. Rank 0 alone logs, writes
checkpoints and results; every rank trains on its share of each batch and decodes its share of
the users (see ``recbole_mql.trainer.generative_trainer``).
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    """Where this process sits: global ``rank``, ``local_rank`` on its host, ``world_size`` in all."""

    rank: int
    local_rank: int
    world_size: int
    init_method: str


def torchrun_launch():
    """The :class:`Launch` torchrun describes in the environment, or None (not launched by torchrun)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return None
    return Launch(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]), "env://")


def recbole_launch(config):
    """The :class:`Launch` of RecBole's keys (``local_rank`` set by the spawner; rank = local_rank + offset)."""
    nproc = int(config.get("nproc") or 1)
    world_size = int(config.get("world_size") or -1)
    world_size = nproc if world_size <= 0 else world_size
    init = f"tcp://{config.get('ip') or 'localhost'}:{config.get('port') or 5678}"
    local_rank = int(config["local_rank"])
    return Launch(local_rank + int(config.get("offset") or 0), local_rank, world_size, init)


def backend_for(device):
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(local_rank, use_gpu):
    """This process's device: GPU ``local_rank`` when GPUs are visible and wanted, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(launch, device):
    """Join the process group once per process (Config is built several times in one run)."""
    if launch.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device), init_method=launch.init_method,
                                rank=launch.rank, world_size=launch.world_size)


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main_process():
    return rank() == 0


def barrier():
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (e.g. a checkpoint path holding rank 0's timestamp)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(value, device):
    """Sum of a float over the ranks."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def gather_rows(tensor, device):
    """Every rank's ``tensor`` [n_r, ...] concatenated in rank order: [sum n_r, ...] on every rank.

    Ranks may hold different numbers of rows (the last shard of users is shorter).
    """
    if world_size() == 1:
        return tensor
    on_device = tensor.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([on_device.shape[0]], dtype=torch.long, device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *on_device.shape[1:]), dtype=on_device.dtype, device=device)
    padded[:on_device.shape[0]] = on_device
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n.item())] for part, n in zip(parts, sizes)]).to(tensor.device)


def shard_range(n, shard_rank=None, shards=None):
    """The contiguous block of ``range(n)`` that rank ``shard_rank`` of ``shards`` handles: blocks in rank
    order concatenate to ``range(n)``, so gathered results keep a single process's order."""
    shard_rank = rank() if shard_rank is None else shard_rank
    shards = world_size() if shards is None else shards
    base, extra = divmod(n, shards)
    start = shard_rank * base + min(shard_rank, extra)
    return start, start + base + (1 if shard_rank < extra else 0)


def destroy():
    if dist.is_initialized():
        dist.destroy_process_group()
