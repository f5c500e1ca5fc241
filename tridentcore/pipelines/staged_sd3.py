"""Stable Diffusion 3 as three stages (see :mod:`.staged`)."""

from __future__ import annotations

import dataclasses

import torch

from .staged_base import ModelLimits, StagedPipeline, _cfg, _decode_shifted, _noise

__all__ = ["SD3Staged"]


class SD3Staged(StagedPipeline):
    family = "sd3"
    default_guidance = 7.0
    _vae_numbers = ("scaling_factor", "shift_factor")

    @property
    def limits(self) -> ModelLimits:
        # the position table has pos_embed_max_size patches a side: past it the transformer cannot run
        # (the tiny model's 96: 1536 px; it said "Height (128) cannot be greater than pos_embed_max_size")
        base = super().limits
        config = self.pipe.transformer.config
        most = getattr(config, "pos_embed_max_size", None)
        if not most:
            return base
        side = min(base.max_size, int(most) * int(config.patch_size) * self.vae_scale)
        return dataclasses.replace(base, max_size=side // base.size_multiple * base.size_multiple)

    def image_tokens(self, height, width, frames=1):
        patch = self.vae_scale * int(self.pipe.transformer.config.patch_size)
        return (height // patch) * (width // patch)

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
