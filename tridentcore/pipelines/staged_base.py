"""The base of every staged pipeline (see :mod:`.staged`): :class:`StagedPipeline` with its three
stages and the shared denoising loop, :class:`ModelLimits`, and the helpers the family modules share
(per-request noise, classifier-free guidance, uint8 conversion, the SD3/Flux VAE decode)."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.defaults import MAX_SIDE_PX
from ..core.types import STAGES, StageKind

logger = logging.getLogger(__name__)

__all__ = ["ANY_MODEL", "Embeddings", "ModelLimits", "NonFiniteOutput", "StagedPipeline"]

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
            if frames < 1 or (frames - 1) % self.frames_multiple:
                problems.append(f"frames {frames} is not k*{self.frames_multiple}+1")
            elif frames > self.max_frames:  # (129 is 32*4+1: "not k*4+1 in [1, 125]" said the wrong thing)
                problems.append(f"frames {frames} is over this model's {self.max_frames}")
        elif frames != 1:
            problems.append(f"frames must be 1 for an image model (got {frames})")
        return problems


# What every supported model takes at least (sides of 32 px or more, multiples of 16, at most
# MAX_SIDE_PX: each family's multiple is max(16, 2 x its VAE's scale)): a size outside it is refused
# before a model is built.
ANY_MODEL = ModelLimits(min_size=32, max_size=MAX_SIDE_PX, size_multiple=16, video=False)


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


class NonFiniteOutput(ValueError):
    """A stage's output holds NaN or infinite values: never a result to pass on. Damaged weights do it
    (outside test 110: a transformer file with 1 MB overwritten kept its size and header, and its NaN
    latents became an all-black image, served with HTTP 200), or numbers that overflow their dtype."""


def _check_finite(t: torch.Tensor, what: str, why: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteOutput(f"{what} hold NaN or infinite values ({str(t.dtype).removeprefix('torch.')}): {why}")


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 the way diffusers' image processor does (denormalise, x255, round);
    :class:`NonFiniteOutput` if they hold NaN or inf (which the conversion would make black)."""
    _check_finite(images, "the decode's pixels", "the VAE's weights may be damaged, or its numbers overflow")
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

    # -- components that go together ---------------------------------------------------------------
    _vae_numbers: tuple[str, ...] = ("scaling_factor",)  # the VAE config's numbers this family's decode uses

    @classmethod
    def mismatches(cls, pipe) -> list[str]:
        """What in a loaded pipeline does not go together, each naming its folder (empty: nothing):
        the numbers the decode takes from the VAE's config, and the latent channels the denoiser makes
        against those the VAE takes. A VAE of the same class from another model (SD 1.5's in an SD3
        folder, outside test 124) loaded, encoded and diffused, then failed at the decode with a
        traceback (``shift_factor`` null); a server said only the TypeError."""
        out = []
        config = pipe.vae.config
        for key in cls._vae_numbers:
            v = getattr(config, key, None)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                    key == "scaling_factor" and v == 0):
                out.append(f"vae/config.json: {key} is {json.dumps(v)}, and the {cls.family} family's decode needs "
                           "a number (a VAE from another model?)")
        out += cls._vae_problems(config)
        denoiser = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
        made, taken = cls._latent_channels(getattr(pipe, denoiser).config), cls._vae_channels(config)
        if made is not None and taken is not None and made != taken:
            out.append(f"{denoiser}/ makes {made}-channel latents and vae/ takes {taken} (a component from another "
                       "model?)")
        return out

    @staticmethod
    def _latent_channels(config) -> int | None:
        """The channels of the latents the denoiser (its config) makes."""
        return getattr(config, "out_channels", None) or getattr(config, "in_channels", None)

    @staticmethod
    def _vae_channels(config) -> int | None:
        """The channels of the latents the VAE (its config) decodes."""
        return getattr(config, "latent_channels", None)

    @staticmethod
    def _vae_problems(config) -> list[str]:
        """The family's own checks of its VAE's config (none here)."""
        return []

    # -- properties a serving system needs -------------------------------------------------------
    def _denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, "transformer", None) or self.pipe.unet

    @property
    def vae_scale(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def limits(self) -> ModelLimits:
        multiple = max(16, self.vae_scale * 2)
        return ModelLimits(min_size=multiple * 2, max_size=MAX_SIDE_PX, size_multiple=multiple, video=False)

    def image_tokens(self, height: int, width: int, frames: int = 1) -> int | None:
        """The latent tokens the denoiser attends over for one request of this size (what a
        sequence-parallel diffuse splits across its members); None for a UNet, which has none."""
        return None

    def modules(self) -> dict[str, list[torch.nn.Module]]:
        """The modules each stage needs resident: what placing or evicting a stage moves."""
        enc = [m for k, m in self.pipe.components.items() if k.startswith("text_encoder") and m is not None]
        return {StageKind.ENCODE: enc, StageKind.DIFFUSE: [self._denoiser()], StageKind.DECODE: [self.pipe.vae]}

    def weights_bytes(self, stage: StageKind) -> int:
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
        emb = self._encode(prompts, negatives)
        for key, t in emb.items():
            _check_finite(t, f"{self.name}: the encode's {key}", "the text encoders' weights may be damaged")
        return emb

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
        if steps is None:
            steps = getattr(shape, "steps", None) or self.default_steps
        if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
            # (0 ran the default 28 steps, unsaid: outside test; the HTTP API's bound, MAX_STEPS, is its own)
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
        steps = int(steps)
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
        out = self._diffuse(embeddings, batch, height, width, frames, seed, steps, guidance,
                            start_step, end_step, latents, scheduler)
        _check_finite(out, f"{self.name}: the diffuse's latents (steps {start_step}-{end_step})",
                      "the denoiser's weights may be damaged")
        return out

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Latents to uint8 pixels; ``tiled`` decodes in tiles to bound activation memory."""
        vae = self.pipe.vae
        if tiled and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        try:
            return self._decode(latents.to(self.pipe.vae.device))
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(f"{self.name}: {exc}") from None
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


def _decode_shifted(vae, latents: torch.Tensor) -> torch.Tensor:
    """The SD3/Flux VAE: latents are scaled and shifted."""
    x = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    img = vae.decode(x, return_dict=False)[0]
    return _to_uint8(img).permute(0, 2, 3, 1).cpu()
