"""The processes of one job: a single process, or several started by torchrun /
torch.distributed.launch (RANK, WORLD_SIZE, LOCAL_RANK in the environment).

Shared by `score` and `diversity`, so both set up and leave the process group the same way: one GPU
per process under NCCL (collectives run on the current device), gloo on CPUs; the group is closed only
after a final barrier, so that no process leaves while another still needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


def env_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment, (0, 1, 0) without one."""
    return (int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1),
            int(os.environ.get("LOCAL_RANK", "0") or 0))


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "Processes":
        """Join the launcher's process group (once); a single process needs none."""
        rank, world, local_rank = env_rank()
        if world > 1:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                use_nccl = not str(device).startswith("cpu") and torch.cuda.is_available()
                if use_nccl:  # NCCL collectives run on the current device: one GPU per process
                    torch.cuda.set_device(local_rank % torch.cuda.device_count())
                dist.init_process_group(backend="nccl" if use_nccl else "gloo")
            return cls(dist.get_rank(), dist.get_world_size(), local_rank)
        return cls()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group only when every process is done with it."""
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order (picklable values made by this job, never read from disk)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def all_sum(self, values: list[float]) -> list[float]:
        gathered = self.all_gather(values)
        return [sum(v[i] for v in gathered) for i in range(len(values))]
