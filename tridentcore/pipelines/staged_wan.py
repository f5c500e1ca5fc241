"""Wan 2.1 (text to video) as three stages (see :mod:`.staged`)."""

from __future__ import annotations

import torch

from .staged_base import ModelLimits, StagedPipeline, _noise, _to_uint8

__all__ = ["WanStaged"]


class WanStaged(StagedPipeline):
    family = "wan"
    default_steps = 50
    default_guidance = 5.0
    max_sequence_length = 512  # WanPipeline.__call__'s default (its encode_prompt defaults to 226)
    _vae_numbers = ()  # (its decode takes latents_mean and latents_std instead: _vae_problems)

    @staticmethod
    def _vae_channels(config):
        return getattr(config, "z_dim", None)

    @staticmethod
    def _vae_problems(config):
        z = getattr(config, "z_dim", None)
        out = []
        for key in ("latents_mean", "latents_std"):
            v = getattr(config, key, None)
            if not (isinstance(v, (list, tuple)) and len(v) == z and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                out.append(f"vae/config.json: {key} is not a list of z_dim ({z}) numbers, which the wan family's "
                           "decode needs")
        return out

    @property
    def vae_scale(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def limits(self) -> ModelLimits:
        t = int(self.pipe.vae_scale_factor_temporal)
        multiple = max(16, self.vae_scale * 2)
        # the rotary table has rope_max_seq_len positions per axis (latent frames, rows, columns of
        # patches): past it the transformer cannot run (the tiny model's 32: 125 frames, 512 px)
        config = self.pipe.transformer.config
        rope = int(config.rope_max_seq_len)
        pt, ph, _ = (int(p) for p in config.patch_size)
        max_size = min(1280, rope * self.vae_scale * ph) // multiple * multiple
        max_frames = min(129, ((rope * pt - 1) * t + 1))
        return ModelLimits(min_size=multiple * 2, max_size=max_size, size_multiple=multiple, video=True,
                           frames_multiple=t, max_frames=max_frames, max_prompt_tokens=512)

    def image_tokens(self, height, width, frames=1):
        pt, ph, pw = (int(p) for p in self.pipe.transformer.config.patch_size)
        lat_frames = (frames - 1) // int(self.pipe.vae_scale_factor_temporal) + 1
        return (lat_frames // pt) * (height // self.vae_scale // ph) * (width // self.vae_scale // pw)

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
