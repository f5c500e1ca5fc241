"""Flux as three stages (see :mod:`.staged`): guidance-distilled, packed latents inside ``diffuse``."""

from __future__ import annotations

import numpy as np
import torch

from .staged_base import StagedPipeline, _decode_shifted, _noise

__all__ = ["FluxStaged"]


class FluxStaged(StagedPipeline):
    family = "flux"
    cfg = False  # guidance-distilled: one forward per step, guidance is an input
    default_guidance = 3.5
    _vae_numbers = ("scaling_factor", "shift_factor")

    @staticmethod
    def _latent_channels(config):
        packed = getattr(config, "out_channels", None) or getattr(config, "in_channels", None)
        return None if packed is None else packed // 4  # 2x2 patches packed into channels

    def image_tokens(self, height, width, frames=1):
        return (height // (self.vae_scale * 2)) * (width // (self.vae_scale * 2))  # packed 2x2 latents

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
