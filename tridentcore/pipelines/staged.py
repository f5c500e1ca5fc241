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
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.types import STAGES, StageKind

logger = logging.getLogger(__name__)

Embeddings = dict[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a model accepts: sizes are multiples of ``size_multiple`` within the bounds."""

    min_size: int
    max_size: int
    size_multiple: int
    video: bool
    frames_multiple: int = 1  # valid frame counts are k * frames_multiple + 1 for video
    max_frames: int = 1
    max_prompt_tokens: int = 77

    def check(self, height: int, width: int, frames: int = 1) -> list[str]:
        """Every problem with a requested shape (empty when it is valid)."""
        problems = []
        for name, value in (("height", height), ("width", width)):
            if value % self.size_multiple:
                problems.append(f"{name} {value} is not a multiple of {self.size_multiple}")
            if not self.min_size <= value <= self.max_size:
                problems.append(f"{name} {value} is outside [{self.min_size}, {self.max_size}]")
        if self.video:
            if frames < 1 or (frames - 1) % self.frames_multiple or frames > self.max_frames:
                problems.append(
                    f"frames {frames} is not k*{self.frames_multiple}+1 in [1, {self.max_frames}]"
                )
        elif frames != 1:
            problems.append(f"frames must be 1 for an image model (got {frames})")
        return problems


def _generators(seed: int | Sequence[int], batch: int) -> list[torch.Generator]:
    seeds = [int(seed)] * batch if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} requests")
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _noise(shape: tuple[int, ...], seed: int | Sequence[int], device, dtype) -> torch.Tensor:
    """One CPU generator per request (rows drawn independently), then moved to the device."""
    gens = _generators(seed, shape[0])
    rows = [torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in gens]
    return torch.cat(rows, dim=0).to(device)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 the way diffusers' image processor does (denormalise, x255, round)."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    return (images * 255).round().to(torch.uint8)


class StagedPipeline:
    """One diffusers pipeline, exposed as encode / diffuse / decode executors."""

    family: str = ""
    cfg: bool = True  # runs prompt and negative prompt together (classifier-free guidance)
    default_steps: int = 28
    default_guidance: float = 7.0

    def __init__(self, pipe, name: str, tiny: bool = False) -> None:
        self.pipe = pipe
        self.name = name
        self.tiny = tiny
        self.device = pipe.device
        self.dtype = self._denoiser().dtype

    # -- properties a serving system needs -------------------------------------------------------
    def _denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, "transformer", None) or self.pipe.unet

    @property
    def vae_scale(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def limits(self) -> ModelLimits:
        multiple = max(16, self.vae_scale * 2)
        return ModelLimits(min_size=multiple * 2, max_size=4096, size_multiple=multiple, video=False)

    def modules(self) -> dict[str, list[torch.nn.Module]]:
        """The modules each stage needs resident: what placing or evicting a stage moves."""
        enc = [m for k, m in self.pipe.components.items() if k.startswith("text_encoder") and m is not None]
        return {StageKind.ENCODE: enc, StageKind.DIFFUSE: [self._denoiser()], StageKind.DECODE: [self.pipe.vae]}

    def weights_bytes(self, stage: str) -> int:
        return sum(p.numel() * p.element_size() for m in self.modules()[stage] for p in m.parameters())

    def to(self, device: str | torch.device, stages: Sequence[str] = STAGES):
        """Move the modules of ``stages`` (weights placed or evicted as a placement plan says)."""
        for stage in stages:
            for module in self.modules()[stage]:
                module.to(device)
        if set(stages) == set(STAGES):
            self.device = torch.device(device)
        return self

    # -- the three stages ------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None) -> Embeddings:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if negative_prompts is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative_prompts] if isinstance(negative_prompts, str) else list(negative_prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
        return self._encode(prompts, negatives)

    @torch.inference_mode()
    def diffuse(
        self,
        embeddings: Embeddings,
        shape,
        seed: int | Sequence[int] = 0,
        steps: int | None = None,
        guidance: float | None = None,
        start_step: int = 0,
        end_step: int | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run denoising steps ``[start_step, end_step)`` of a ``steps``-step schedule.

        ``shape`` is a ``Shape`` (or any object with ``height``, ``width``, ``frames``) or a
        ``(height, width[, frames])`` tuple. ``latents`` are required when ``start_step > 0``.
        """
        height, width, frames = _hwf(shape)
        steps = int(steps or getattr(shape, "steps", None) or self.default_steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        end_step = steps if end_step is None else int(end_step)
        if not 0 <= start_step <= end_step <= steps:
            raise ValueError(f"need 0 <= start_step ({start_step}) <= end_step ({end_step}) <= steps ({steps})")
        if start_step > 0 and latents is None:
            raise ValueError("resuming at start_step > 0 needs the latents returned by the earlier call")
        problems = self.limits.check(height, width, frames)
        if problems:
            raise ValueError(f"{self.name}: " + "; ".join(problems))
        batch = next(iter(embeddings.values())).shape[0]
        scheduler = copy.deepcopy(self.pipe.scheduler)
        return self._diffuse(embeddings, batch, height, width, frames, seed, steps, guidance,
                             start_step, end_step, latents, scheduler)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Latents to uint8 pixels; ``tiled`` decodes in tiles to bound activation memory."""
        vae = self.pipe.vae
        if tiled and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        try:
            return self._decode(latents.to(self.pipe.vae.device))
        finally:
            if tiled and hasattr(vae, "disable_tiling"):
                vae.disable_tiling()

    def generate(self, prompt: str, shape, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str | None = None) -> torch.Tensor:
        """The three stages in a row, for one request."""
        emb = self.encode([prompt], None if negative_prompt is None else [negative_prompt])
        return self.decode(self.diffuse(emb, shape, seed=seed, steps=steps, guidance=guidance))

    # -- family hooks ----------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negatives: list[str]) -> Embeddings:
        raise NotImplementedError

    def _diffuse(self, emb, batch, height, width, frames, seed, steps, guidance, start, end, latents, scheduler):
        raise NotImplementedError

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _loop(self, scheduler, timesteps, start, end, latents, predict, step_kwargs=None):
        """The shared denoising loop over steps ``[start, end)``."""
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        for i in range(start, end):
            t = timesteps[i]
            noise_pred = predict(latents, t, i)
            latents = scheduler.step(noise_pred, t, latents, **(step_kwargs or {}), return_dict=False)[0]
        return latents


def _hwf(shape) -> tuple[int, int, int]:
    if isinstance(shape, (tuple, list)):
        h, w = int(shape[0]), int(shape[1])
        return h, w, int(shape[2]) if len(shape) > 2 else 1
    return int(shape.height), int(shape.width), int(getattr(shape, "frames", 1) or 1)


def _cfg(noise_pred: torch.Tensor, guidance: float) -> torch.Tensor:
    uncond, text = noise_pred.chunk(2)
    return uncond + guidance * (text - uncond)


# ------------------------------------------------------------------------------------------- SD3
class SD3Staged(StagedPipeline):
    family = "sd3"
    default_guidance = 7.0

    def _encode(self, prompts, negatives):
        pe, npe, ppe, nppe = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=negatives,
            device=self.device, do_classifier_free_guidance=True, num_images_per_prompt=1,
            max_sequence_length=256,
        )
        return {"prompt_embeds": pe, "pooled_prompt_embeds": ppe,
                "negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": nppe}

    def _diffuse(self, emb, batch, height, width, frames, seed, steps, guidance, start, end, latents, scheduler):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift, retrieve_timesteps)

        tr = self.pipe.transformer
        do_cfg = guidance > 1
        pe, ppe = emb["prompt_embeds"], emb["pooled_prompt_embeds"]
        if do_cfg:
            pe = torch.cat([emb["negative_prompt_embeds"], pe])
            ppe = torch.cat([emb["negative_pooled_prompt_embeds"], ppe])
        shape = (batch, tr.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        latents = _noise(shape, seed, self.device, pe.dtype) if latents is None else latents.to(self.device, pe.dtype)
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            seq = (shape[2] // tr.config.patch_size) * (shape[3] // tr.config.patch_size)
            c = scheduler.config
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, **kwargs)

        def predict(x, t, i):
            inp = torch.cat([x] * 2) if do_cfg else x
            out = tr(hidden_states=inp, timestep=t.expand(inp.shape[0]), encoder_hidden_states=pe,
                     pooled_projections=ppe, return_dict=False)[0]
            return _cfg(out, guidance) if do_cfg else out

        return self._loop(scheduler, timesteps, start, end, latents, predict)

    def _decode(self, latents):
        return _decode_shifted(self.pipe.vae, latents)


def _decode_shifted(vae, latents: torch.Tensor) -> torch.Tensor:
    """The SD3/Flux VAE: latents are scaled and shifted."""
    x = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    img = vae.decode(x, return_dict=False)[0]
    return _to_uint8(img).permute(0, 2, 3, 1).cpu()


# ------------------------------------------------------------------------------------------ Flux
class FluxStaged(StagedPipeline):
    family = "flux"
    cfg = False  # guidance-distilled: one forward per step, guidance is an input
    default_guidance = 3.5

    def _encode(self, prompts, negatives):
        pe, ppe, _text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=512,
        )
        return {"prompt_embeds": pe, "pooled_prompt_embeds": ppe}

    def _diffuse(self, emb, batch, height, width, frames, seed, steps, guidance, start, end, latents, scheduler):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe, tr = self.pipe, self.pipe.transformer
        pe, ppe = emb["prompt_embeds"], emb["pooled_prompt_embeds"]
        channels = tr.config.in_channels // 4
        h = 2 * (height // (self.vae_scale * 2))
        w = 2 * (width // (self.vae_scale * 2))
        shape = (batch, channels, h, w)
        latents = _noise(shape, seed, self.device, pe.dtype) if latents is None else latents.to(self.device, pe.dtype)
        packed = pipe._pack_latents(latents, batch, channels, h, w)
        image_ids = pipe._prepare_latent_image_ids(batch, h // 2, w // 2, self.device, pe.dtype)
        text_ids = torch.zeros(pe.shape[1], 3, device=self.device, dtype=pe.dtype)
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        c = scheduler.config
        mu = calculate_shift(packed.shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)
        g = None
        if tr.config.guidance_embeds:
            g = torch.full([1], guidance, device=self.device, dtype=torch.float32).expand(batch)

        def predict(x, t, i):
            ts = t.expand(x.shape[0]).to(x.dtype)
            return tr(hidden_states=x, timestep=ts / 1000, guidance=g, pooled_projections=ppe,
                      encoder_hidden_states=pe, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]

        packed = self._loop(scheduler, timesteps, start, end, packed, predict)
        return self.unpack(packed, height, width)

    def unpack(self, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.pipe._unpack_latents(packed, height, width, self.vae_scale)

    def _decode(self, latents):
        return _decode_shifted(self.pipe.vae, latents)


# ------------------------------------------------------------------------------- SD 1.x and SDXL
class SDStaged(StagedPipeline):
    family = "sd"
    default_steps = 50
    default_guidance = 7.5

    def _encode(self, prompts, negatives):
        pe, npe = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=negatives,
        )
        return {"prompt_embeds": pe, "negative_prompt_embeds": npe}

    def _extra(self, emb, do_cfg, batch, height, width):
        """Conditioning passed to the UNet besides the text embeddings (SDXL: pooled and time ids)."""
        return {}

    def _diffuse(self, emb, batch, height, width, frames, seed, steps, guidance, start, end, latents, scheduler):
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        unet = self.pipe.unet
        do_cfg = guidance > 1
        pe = emb["prompt_embeds"]
        if do_cfg:
            pe = torch.cat([emb["negative_prompt_embeds"], pe])
        added = self._extra(emb, do_cfg, batch, height, width)
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device)
        shape = (batch, unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        if latents is None:
            latents = _noise(shape, seed, self.device, pe.dtype) * scheduler.init_noise_sigma
        else:
            latents = latents.to(self.device, pe.dtype)
        # DDIM takes ``eta``; the pipeline's default 0 makes its step deterministic (no generator
        # is drawn from), as is Euler's with its default ``s_churn`` of 0.
        step_kwargs = {"eta": 0.0} if "eta" in inspect.signature(scheduler.step).parameters else {}

        def predict(x, t, i):
            inp = torch.cat([x] * 2) if do_cfg else x
            inp = scheduler.scale_model_input(inp, t)
            out = unet(inp, t, encoder_hidden_states=pe, added_cond_kwargs=added or None, return_dict=False)[0]
            return _cfg(out, guidance) if do_cfg else out

        return self._loop(scheduler, timesteps, start, end, latents, predict, step_kwargs)

    def _decode(self, latents):
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            x = latents.to(vae.dtype) / vae.config.scaling_factor
            img = vae.decode(x, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return _to_uint8(img).permute(0, 2, 3, 1).cpu()


class SDXLStaged(SDStaged):
    family = "sdxl"
    default_steps = 50
    default_guidance = 5.0

    def _encode(self, prompts, negatives):
        pe, npe, ppe, nppe = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=negatives,
        )
        return {"prompt_embeds": pe, "pooled_prompt_embeds": ppe,
                "negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": nppe}

    def _extra(self, emb, do_cfg, batch, height, width):
        pipe = self.pipe
        ppe = emb["pooled_prompt_embeds"]
        proj = (int(ppe.shape[-1]) if pipe.text_encoder_2 is None
                else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width),
                                          dtype=emb["prompt_embeds"].dtype, text_encoder_projection_dim=proj)
        if do_cfg:
            ppe = torch.cat([emb["negative_pooled_prompt_embeds"], ppe])
            time_ids = torch.cat([time_ids, time_ids])
        return {"text_embeds": ppe.to(self.device), "time_ids": time_ids.to(self.device).repeat(batch, 1)}


# ------------------------------------------------------------------------------------------- Wan
class WanStaged(StagedPipeline):
    family = "wan"
    default_steps = 50
    default_guidance = 5.0
    max_sequence_length = 512  # WanPipeline.__call__'s default (its encode_prompt defaults to 226)

    @property
    def vae_scale(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def limits(self) -> ModelLimits:
        t = int(self.pipe.vae_scale_factor_temporal)
        multiple = max(16, self.vae_scale * 2)
        return ModelLimits(min_size=multiple * 2, max_size=1280, size_multiple=multiple, video=True,
                           frames_multiple=t, max_frames=129, max_prompt_tokens=512)

    def _encode(self, prompts, negatives):
        pe, npe = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=negatives, do_classifier_free_guidance=True,
            num_videos_per_prompt=1, device=self.device, max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": pe, "negative_prompt_embeds": npe}

    def _diffuse(self, emb, batch, height, width, frames, seed, steps, guidance, start, end, latents, scheduler):
        pipe, tr = self.pipe, self.pipe.transformer
        do_cfg = guidance > 1
        pe = emb["prompt_embeds"].to(tr.dtype)
        npe = emb["negative_prompt_embeds"].to(tr.dtype) if do_cfg else None
        scheduler.set_timesteps(steps, device=self.device)
        timesteps = scheduler.timesteps
        lat_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
        shape = (batch, tr.config.in_channels, lat_frames, height // self.vae_scale, width // self.vae_scale)
        latents = (_noise(shape, seed, self.device, torch.float32) if latents is None
                   else latents.to(self.device, torch.float32))

        def predict(x, t, i):
            inp = x.to(tr.dtype)
            ts = t.expand(x.shape[0])
            out = tr(hidden_states=inp, timestep=ts, encoder_hidden_states=pe, return_dict=False)[0]
            if do_cfg:
                unc = tr(hidden_states=inp, timestep=ts, encoder_hidden_states=npe, return_dict=False)[0]
                out = unc + guidance * (out - unc)
            return out

        return self._loop(scheduler, timesteps, start, end, latents, predict)

    def _decode(self, latents):
        vae = self.pipe.vae
        x = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
        x = x / inv_std + mean
        video = vae.decode(x, return_dict=False)[0]  # [B, C, F, H, W] in [-1, 1]
        return _to_uint8(video).permute(0, 2, 3, 4, 1).cpu()


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
