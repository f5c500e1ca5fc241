"""Imported once by the forkserver that CPU worker processes are forked from (:mod:`.process_worker`):
torch, and the diffusers and transformers classes the pipelines are built from, so that a worker
(its first start, or its restart after it died) imports nothing and is up in a fraction of a second,
not the 5-6 s of CPU those imports cost each spawned process. Imports only: no tensor is made here
(a thread pool started before a fork would not be there in the child)."""

from __future__ import annotations

import os
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

__all__ = ["AutoencoderKL", "AutoencoderKLWan", "CLIPTextModelWithProjection", "FlowMatchEulerDiscreteScheduler",
           "SD3Transformer2DModel", "StableDiffusion3Pipeline", "T5EncoderModel", "UMT5EncoderModel", "WanPipeline",
           "WanTransformer3DModel", "builders", "torch", "worker_process"]
