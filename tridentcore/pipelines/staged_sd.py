"""Stable Diffusion 1.x and SDXL as three stages (see :mod:`.staged`)."""

from __future__ import annotations

import inspect

import torch

from .staged_base import StagedPipeline, _cfg, _noise, _to_uint8

__all__ = ["SDStaged", "SDXLStaged"]


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
