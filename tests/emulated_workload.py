"""The mixed workload the in-process engine tests submit: sd3-medium images at two sizes and short
Wan videos (every fourth request), on emulated GPUs priced by the ``h200`` profile."""

from __future__ import annotations

import asyncio

from tridentcore.core.types import Shape
from tridentcore.runtime.engine import Submission

IMG = Shape(1024, 1024, 1, 28)
SMALL = Shape(512, 512, 1, 20)
VID = Shape(480, 832, 17, 50)


def mixed(i: int) -> Submission:
    if i % 4 == 3:
        return Submission("wan2.1-1.3b", f"video {i}", VID, seed=i)
    return Submission("sd3-medium", f"image {i}", IMG if i % 2 else SMALL, seed=i)


def run(coro, timeout_s: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))
