"""Imported once by the forkserver that CPU worker processes are forked from (:mod:`.process_worker`):
torch, and the diffusers and transformers classes the pipelines are built from, so that a worker
(its first start, or its restart after it died) imports nothing and is up in a fraction of a second,
not the 5-6 s of CPU those imports cost each spawned process. Imports only: no tensor is made here
(a thread pool started before a fork would not be there in the child).

The forkserver ends as its server does (its server's end closes the pipe it watches): once that has
been read, it ends at once (``_exit_at_once``) rather than through the interpreter's teardown of
these libraries, which took 1.1-1.2 s of CPU on a quiet 2-core host, longer on a busy one (an
outside test saw it outlive its server by up to 5 s)."""

from __future__ import annotations

import atexit
import os
import sys
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402,F401
import torch.multiprocessing  # noqa: E402,F401  (the shared-memory reductions the results go back through)
from diffusers import (AutoencoderKL, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler,  # noqa: E402,F401
                       SD3Transformer2DModel, StableDiffusion3Pipeline, WanPipeline, WanTransformer3DModel)
from transformers import CLIPTextModelWithProjection, T5EncoderModel, UMT5EncoderModel  # noqa: E402,F401

from ..pipelines import builders  # noqa: E402,F401
from . import worker_process  # noqa: E402,F401


def _in_forkserver() -> bool:
    """Whether this import is the preload of multiprocessing's forkserver (its ``main`` is below on the
    stack), not an import by any other process."""
    from multiprocessing import forkserver

    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def _exit_at_once(pid: int) -> None:
    """(atexit, in the forkserver: run first, being registered last.) End without the teardown. The
    processes forked from it never get here: multiprocessing ends them with ``os._exit``."""
    if os.getpid() != pid:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


if _in_forkserver():
    atexit.register(_exit_at_once, os.getpid())

__all__ = ["AutoencoderKL", "AutoencoderKLWan", "CLIPTextModelWithProjection", "FlowMatchEulerDiscreteScheduler",
           "SD3Transformer2DModel", "StableDiffusion3Pipeline", "T5EncoderModel", "UMT5EncoderModel", "WanPipeline",
           "WanTransformer3DModel", "builders", "torch", "worker_process"]
