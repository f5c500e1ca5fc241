"""Diffusers pipelines split into three separately callable stages.

``encode(prompts, negative_prompts)`` returns text embeddings, ``diffuse(...)`` returns latents and
``decode(latents)`` returns uint8 images ``[B, H, W, 3]`` or video frames ``[B, F, H, W, 3]``. The
stages pass plain tensors (a ``dict[str, Tensor]`` of embeddings, one latent tensor), so they can
run in different processes or on different devices.

The denoising loop is ours, step for step the same arithmetic as the diffusers pipeline it wraps
(a test checks that the staged run gives the pipeline's own latents and pixels), with two
serving-system additions:

* **Resumable diffuse.** ``diffuse(..., start_step=k, latents=x)`` continues from the latents
  returned by ``diffuse(..., end_step=k)``: running ``[0, k)`` then ``[k, N)`` equals running
  ``[0, N)``. Each call deep-copies the scheduler and positions it at ``start_step``, so no state
  lives between calls. This is exact for single-step solvers (flow-matching Euler, DDIM, Euler),
  which every built-in model uses. Multistep solvers (UniPC, DPM-Solver++, as some checkpoints on
  disk ship) keep a history of model outputs; a resumed run restarts that history at first order,
  which changes the result slightly.
* **Per-request seeds.** Noise comes from one CPU generator per request, so a request's result
  does not depend on which other requests share its batch, nor on the device.

Latents are always the spatial layout ``[B, C, h, w]`` (``[B, C, f, h, w]`` for video); Flux's
packed sequence layout is an internal detail of its ``diffuse``.

The base class is in :mod:`.staged_base`, one module per family (``staged_sd3``, ``staged_flux``,
``staged_sd``, ``staged_wan``); this module names them (:data:`FAMILIES`, :data:`PIPELINE_CLASSES`).
"""

from __future__ import annotations

from .staged_base import Embeddings, ModelLimits, StagedPipeline
from .staged_flux import FluxStaged
from .staged_sd import SDStaged, SDXLStaged
from .staged_sd3 import SD3Staged
from .staged_wan import WanStaged

__all__ = [
    "Embeddings", "FAMILIES", "FluxStaged", "ModelLimits", "PIPELINE_CLASSES", "SD3Staged", "SDStaged", "SDXLStaged",
    "StagedPipeline", "WanStaged",
]  # fmt: skip


FAMILIES: dict[str, type[StagedPipeline]] = {
    "sd3": SD3Staged,
    "flux": FluxStaged,
    "sd": SDStaged,
    "sdxl": SDXLStaged,
    "wan": WanStaged,
}

# diffusers pipeline class name (model_index.json ``_class_name``) -> family
PIPELINE_CLASSES: dict[str, str] = {
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "WanPipeline": "wan",
}
