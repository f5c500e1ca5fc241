"""Which stage weights a GPU worker holds on its device, moved between host memory and the GPU as the
placement plan says (torch imported only when weights move).
"""

from __future__ import annotations

from collections.abc import Sequence

from .tasks import StageTask

__all__ = ["Residency", "residency_moves"]


def residency_moves(on_device: set[tuple[str, str]], resident: Sequence[tuple[str, str]],
                    needed: tuple[str, str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a GPU worker moves before running a stage: evict every instance the plan no longer holds
    there (first, to free memory), then load the stage it is asked to run if it is not there yet.
    Instances the plan holds but this task does not need are loaded when a task needs them."""
    want = set(resident) | {needed}
    evict = sorted(on_device - want)
    load = [] if needed in on_device else [needed]
    return evict, load


class Residency:
    """The stage weights on one GPU, moved between host memory and the device as the plan says."""

    def __init__(self, pipes: dict, device: str) -> None:
        self.pipes = pipes
        self.device = device
        self.on_device: set[tuple[str, str]] = set()
        self.loads = 0
        self.evictions = 0

    def sync(self, task: StageTask) -> None:
        import torch

        evict, load = residency_moves(self.on_device, task.resident, (task.model, task.stage))
        for model, stage in evict:
            self.pipes[model].to("cpu", [stage])
            self.on_device.discard((model, stage))
            self.evictions += 1
        if evict:
            torch.cuda.empty_cache()
        for model, stage in load:
            self.pipes[model].to(self.device, [stage])
            self.on_device.add((model, stage))
            self.loads += 1
