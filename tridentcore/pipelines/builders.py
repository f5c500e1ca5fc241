"""Build diffusers pipelines in code: tiny random-weight models and the real architectures.

``tiny-*`` pipelines are small enough to run on a laptop CPU in well under a second; their weights
come from a fixed seed, so every process that builds one gets the same weights (a request encoded
in one worker and denoised in another sees one model). ``arch:*`` pipelines are the published
architectures (the configurations behind the shipped ``h200`` profile) with random weights, for
profiling and load tests on a GPU without downloading anything. Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .tokenizers import build_clip_tokenizer, build_t5_tokenizer

_WEIGHT_SEED = 20251002  # fixed: identical tiny weights in every process


@contextlib.contextmanager
def _building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create modules directly on ``device`` in ``dtype``, with a fixed RNG, restoring global state."""
    previous_dtype = torch.get_default_dtype()
    devices = [] if str(device).startswith(("cpu", "meta")) else [torch.device(device)]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_WEIGHT_SEED)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                yield
        finally:
            torch.set_default_dtype(previous_dtype)


@contextlib.contextmanager
def _plain() -> Iterator[None]:
    """Schedulers keep small float32 tables on the CPU, whatever device the modules are built on."""
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            yield
    finally:
        torch.set_default_dtype(previous_dtype)


def _clip(hidden: int, layers: int, heads: int, inter: int, proj: int, vocab: int, act: str, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=proj,
        hidden_act=act,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _t5(d_model: int, d_kv: int, d_ff: int, layers: int, heads: int, vocab: int, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32 if d_model >= 1024 else 8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def _vae_kl(channels: tuple[int, ...], latent: int, groups: int, layers: int, scaling: float, shift: float | None):
    from diffusers import AutoencoderKL

    n = len(channels)
    kwargs: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(channels),
        layers_per_block=layers,
        latent_channels=latent,
        norm_num_groups=groups,
        scaling_factor=scaling,
    )
    if shift is not None:  # SD3/Flux VAE: no quant convs, a shift factor
        kwargs.update(shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)
    return AutoencoderKL(**kwargs).eval()


# --------------------------------------------------------------------------------------------- SD3
def _sd3(tiny: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if tiny:
        te1 = _clip(32, 2, 4, 37, 32, 1000, "gelu", True)
        te2 = _clip(32, 2, 4, 37, 32, 1000, "gelu", True)
        te3, tok3 = None, None
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
            pooled_projection_dim=64, out_channels=4, pos_embed_max_size=96,
        )
        vae = _vae_kl((8, 16, 16, 16), 4, 8, 1, 1.5305, 0.0609)
    else:
        te1 = _clip(768, 12, 12, 3072, 768, 49408, "quick_gelu", True)
        te2 = _clip(1280, 32, 20, 5120, 1280, 49408, "gelu", True)
        te3, tok3 = _t5(4096, 64, 10240, 24, 64, 32128), build_t5_tokenizer(256)
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
        )
        vae = _vae_kl((128, 256, 512, 512), 16, 32, 2, 1.5305, 0.0609)
    with _plain():
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=scheduler,
        vae=vae,
        text_encoder=te1,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=te2,
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=te3,
        tokenizer_3=tok3,
    )


# -------------------------------------------------------------------------------------------- Flux
def _flux(tiny: bool, xl: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with _plain():
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    if tiny:
        te1 = _clip(32, 2, 4, 37, 32, 1000, "gelu", False)
        te2 = _t5(32, 8, 37, 2, 4, 1000)
        if xl:
            # tiny-flux-xl: the same encoders and VAE; a transformer wide enough (256) that a
            # sequence-parallel step's compute outweighs its all-to-alls (README, "Results";
            # benchmarks/parallel_speedup.py). 4 heads: degrees 2 and 4 divide them.
            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=64,
                num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
                guidance_embeds=True, axes_dims_rope=(16, 24, 24),
            )
        else:
            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                guidance_embeds=True, axes_dims_rope=(4, 4, 8),
            )
        vae = _vae_kl((8, 16, 16, 16), 4, 8, 1, 0.3611, 0.1159)
    else:
        te1 = _clip(768, 12, 12, 3072, 768, 49408, "quick_gelu", False)
        te2 = _t5(4096, 64, 10240, 24, 64, 32128)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            guidance_embeds=True, axes_dims_rope=(16, 56, 56),
        )
        vae = _vae_kl((128, 256, 512, 512), 16, 32, 2, 0.3611, 0.1159)
    return FluxPipeline(
        transformer=transformer.eval(),
        scheduler=scheduler,
        vae=vae,
        text_encoder=te1,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=te2,
        tokenizer_2=build_t5_tokenizer(512),
    )


def _flux_xl(tiny: bool):
    """tiny-flux with a transformer of width 256 (4 heads x 64), 2 double + 2 single blocks."""
    return _flux(tiny, xl=True)


# ------------------------------------------------------------------------------------- SD 1.x / 2.x
def _sd(tiny: bool):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    if not tiny:
        raise ValueError("no arch: configuration for the SD 1.x family; use arch:sdxl")
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    with _plain():
        scheduler = DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        )
    return StableDiffusionPipeline(
        vae=_vae_kl((8, 16, 16, 16), 4, 8, 1, 0.18215, None),
        text_encoder=_clip(32, 2, 4, 37, 32, 1000, "gelu", False),
        tokenizer=build_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# -------------------------------------------------------------------------------------------- SDXL
def _sdxl(tiny: bool):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    with _plain():
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, timestep_spacing="leading",
        )
    if tiny:
        te1 = _clip(32, 2, 4, 37, 32, 1000, "gelu", False)
        te2 = _clip(32, 2, 4, 37, 32, 1000, "gelu", True)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64, transformer_layers_per_block=(1, 2), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 pooled
        )
        vae = _vae_kl((8, 16, 16, 16), 4, 8, 1, 0.13025, None)
    else:
        te1 = _clip(768, 12, 12, 3072, 768, 49408, "quick_gelu", False)
        te2 = _clip(1280, 32, 20, 5120, 1280, 49408, "gelu", True)
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = _vae_kl((128, 256, 512, 512), 4, 32, 2, 0.13025, None)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
    )


# --------------------------------------------------------------------------------------------- Wan
def _wan(tiny: bool):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    if tiny:
        te = _t5(32, 8, 37, 2, 4, 1000, umt5=True)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    else:
        te = _t5(4096, 64, 10240, 24, 64, 256384, umt5=True)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )
        vae = AutoencoderKLWan(
            base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
            temperal_downsample=[False, True, True],
        )
    # The released Wan uses a multistep UniPC solver; the flow-matching Euler solver costs the
    # same per step and keeps ``diffuse`` exactly resumable between steps (see staged.py).
    with _plain():
        scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return WanPipeline(
        tokenizer=build_t5_tokenizer(512),
        text_encoder=te,
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=scheduler,
    )


# name -> (family, tiny?, builder)
BUILDERS: dict[str, tuple[str, bool, Callable[[bool], Any]]] = {
    "tiny-sd3": ("sd3", True, _sd3),
    "tiny-sd": ("sd", True, _sd),
    "tiny-wan": ("wan", True, _wan),
    "tiny-flux": ("flux", True, _flux),
    "tiny-flux-xl": ("flux", True, _flux_xl),
    "tiny-sdxl": ("sdxl", True, _sdxl),
    "arch:sd3-medium": ("sd3", False, _sd3),
    "arch:flux-dev": ("flux", False, _flux),
    "arch:sdxl": ("sdxl", False, _sdxl),
    "arch:wan2.1-1.3b": ("wan", False, _wan),
}


def build(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Build a diffusers pipeline by registry name, its modules created on ``device`` in ``dtype``."""
    _family, tiny, builder = BUILDERS[name]
    with _building(device, dtype):
        pipe = builder(tiny)
    return pipe
