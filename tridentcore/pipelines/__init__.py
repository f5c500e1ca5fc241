"""Diffusers pipelines split into stage executors (encode -> diffuse -> decode).

Importing this package is light: torch and diffusers load when a pipeline is loaded.

Names:
* ``tiny-*``: random-weight pipelines built in code in well under a second (CPU tests, defaults);
* ``arch:*``: the real architectures with random weights, built on the target device and dtype;
* anything else: a diffusers model directory or hub id, loaded with ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .folder import failing_tokenizer, files_missing, weights_problems

if TYPE_CHECKING:  # pragma: no cover
    from .staged import StagedPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    family: str
    kind: str  # "image" or "video"
    description: str
    profile_name: str | None = None  # the model's name in the shipped profiles, if any


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("tiny-sd3", "sd3", "image", "SD3-style MMDiT transformer, flow-matching Euler, two CLIP encoders (tiny, random)"),
        ModelInfo("tiny-sd", "sd", "image", "SD-1.x-style UNet, DDIM scheduler, one CLIP encoder (tiny, random)"),
        ModelInfo("tiny-wan", "wan", "video", "Wan2.1-style video transformer, Wan VAE, UMT5 encoder (tiny, random)"),
        ModelInfo("tiny-flux", "flux", "image", "Flux-style guidance-distilled transformer, CLIP + T5 encoders (tiny, random)"),
        ModelInfo("tiny-flux-xl", "flux", "image", "tiny-flux with a wider, deeper transformer (width 256, 4 blocks; "
                  "compute outweighs a sequence-parallel step's all-to-alls on CPU)"),
        ModelInfo("tiny-sdxl", "sdxl", "image", "SDXL-style UNet with two CLIP encoders, Euler scheduler (tiny, random)"),
        ModelInfo("arch:sd3-medium", "sd3", "image", "Stable Diffusion 3 medium architecture (2B MMDiT, CLIP-L/G, T5-XXL), random weights", "sd3-medium"),
        ModelInfo("arch:flux-dev", "flux", "image", "FLUX.1-dev architecture (12B transformer, CLIP-L, T5-XXL), random weights", "flux-dev"),
        ModelInfo("arch:sdxl", "sdxl", "image", "SDXL base architecture (2.6B UNet, CLIP-L/G), random weights", "sdxl"),
        ModelInfo("arch:wan2.1-1.3b", "wan", "video", "Wan2.1 T2V 1.3B architecture (DiT, UMT5-XXL, Wan VAE), random weights", "wan2.1-1.3b"),
    )
}


# dtype names the pipelines take, and bytes per weight (a check of size before torch is imported)
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(dtype: str) -> str:
    """The full name of a dtype the pipelines take (``bf16`` -> ``bfloat16``)."""
    check_dtype(dtype)
    return _DTYPE_ALIASES.get(str(dtype), str(dtype))


def served_dtype(device: str) -> str:
    """The dtype a serving worker loads its pipelines in on ``device``: bfloat16 on a GPU, float32 on
    the CPU (a profile measured in another prices that worker wrong: ``trident serve`` warns)."""
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def check_dtype(dtype: str) -> None:
    """ValueError unless ``dtype`` names one the pipelines take (cheap: no torch)."""
    if str(dtype) not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(DTYPE_BYTES))}")


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    try:
        return table[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(table))}") from None


def _root_cause(exc: BaseException) -> str:
    """Why a ``from_pretrained`` failed, on one line: the first line of the innermost error it was
    raised from (huggingface_hub's own message points to a stack trace the CLI does not show)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).replace(" Please check out the root cause in the stacktrace above.", "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:  # ("... from one of:" and the list on the next lines)
        first = " ".join(lines)[:400]
    # diffusers looks for the .safetensors file, then falls back to the .bin and names only that one
    first = re.sub(r"no file named (\S+)\.bin found in", r"no file named \1.safetensors, or \1.bin, found in", first)
    return f"{type(root).__name__}: {first}" if root is not exc else first or type(exc).__name__


def _named(spec: dict):
    """``(key, [library, class name])`` of each component a model index names (not null, not a setting)."""
    return [(key, entry) for key, entry in spec.items()
            if not key.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[0]]


def _component_class(entry: list):
    """The class a model index entry (``[library, class name]``) names, where diffusers finds it: in a
    library, or one of its pipelines; None if it names none."""
    import importlib

    lib = str(entry[0])
    try:
        module = importlib.import_module(lib if lib in ("diffusers", "transformers") else f"diffusers.pipelines.{lib}")
    except ImportError:
        return None
    return getattr(module, str(entry[1]), None)


def _is_module(cls) -> bool:
    """Whether ``cls`` (what :func:`_component_class` found) is a model: a torch module class."""
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _size_problem(name: str, path: Path, spec: dict, dtype_bytes: int, device: str) -> str:
    """Why a folder's models cannot be loaded for their size ("" if they can): each model component
    is built from its config on the meta device (no memory) and its parameters counted. More than
    twice the numbers its weights files hold is a config that does not match them; more than the
    host's available memory (on the CPU) cannot load. Outside test 101: a transformer config of 200
    layers of 1024 heads beside 1.5 MB of weights took 16.7 GB of a 23 GB host before it was stopped."""
    import torch

    from .folder import available_gib, stored_elements

    total = 0
    for key, entry in _named(spec):
        cls = _component_class(entry)
        stored = stored_elements(path / key)
        if not _is_module(cls) or stored is None:
            continue
        try:
            with torch.device("meta"):
                if hasattr(cls, "load_config"):  # a diffusers model
                    model = cls.from_config(cls.load_config(str(path / key)))
                else:  # a transformers model
                    model = cls(cls.config_class.from_pretrained(str(path / key)))
            count = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - a config its class cannot take: the load says so, in its words
            continue
        if count > 2 * stored + 1_000_000:
            return (f"cannot load pipeline {name!r}: {key}/config.json describes a model of {count:,} parameters, "
                    f"but its weights hold {stored:,} numbers: the config does not match its weights")
        total += count
    need, free = total * dtype_bytes / 2**30, available_gib() if device == "cpu" else None
    if free is not None and need > 0.9 * free:
        return (f"cannot load pipeline {name!r}: its models need about {need:.1f} GiB of host memory; "
                f"{free:.1f} GiB is available")
    return ""


# components a model index may leave null (SD3 without its T5 encoder; Wan 2.1 has no second transformer):
# every other one its pipeline class takes is needed (outside tests 101 and 102: a null VAE or text encoder
# loaded, then a traceback at the first decode or encode)
_MAY_BE_NULL = ("text_encoder_3", "tokenizer_3", "transformer_2", "image_encoder", "feature_extractor",
                "safety_checker")


def _check_components(name: str, class_name: str, spec: dict) -> None:
    """Each model component the index names (denoiser, VAE, text encoders) is of a class the pipeline
    class takes: a folder relabelled with another supported class (an SD3 folder saved as
    ``FluxPipeline``) would load and fail only at its first encode, with the library's traceback."""
    import diffusers
    import torch

    takes = getattr(diffusers, class_name)._get_signature_types()

    def component(key: str) -> bool:  # a model, tokenizer or scheduler (not a setting such as boundary_ratio)
        return any(isinstance(t, type) and t.__module__.startswith(("diffusers", "transformers"))
                   for t in takes.get(key, ()))

    for key, entry in spec.items():
        if (component(key) and key not in _MAY_BE_NULL
                and (entry is None or isinstance(entry, list) and entry[:1] == [None])):
            raise ValueError(f"{name}: model_index.json names no {key} (null), and {class_name} needs one")
    for key, entry in _named(spec):
        wanted = tuple(t for t in takes.get(key, ()) if isinstance(t, type) and issubclass(t, torch.nn.Module))
        if not wanted:  # schedulers, tokenizers, processors, or a key the class does not take
            continue
        named = _component_class(entry)
        if not (isinstance(named, type) and issubclass(named, wanted)):
            raise ValueError(f"{name}: model_index.json says {class_name}, whose {key} is a "
                             f"{' or '.join(t.__name__ for t in wanted)}, but names {entry[0]}.{entry[1]} for it")


def _saved_as_other(path: Path, spec: dict) -> str:
    """A diffusers component whose own config names another class than the model index does (""
    if none): a denoiser or VAE copied from another model, or a scheduler config naming a class that
    is neither the index's nor one it stands in for. Outside test 124: a scheduler config naming
    ``NoSuchScheduler`` (and no settings) loaded as the index's class with every setting at its
    default, so the same seed made another image, unsaid; a Wan transformer in an SD3 folder gave
    ``TypeError: unsupported operand type(s) for //: 'int' and 'list'``, naming no component."""
    for key, entry in _named(spec):
        cls = _component_class(entry)
        scheduler = isinstance(cls, type) and hasattr(cls, "_compatibles") and "Scheduler" in cls.__name__
        if _is_module(cls) and str(entry[0]) == "transformers":
            projection = _projection_missing(path / key, str(entry[1]))
            if projection:
                return f"{key}/config.json is a {projection}'s, but model_index.json names {entry[1]} for {key}/: " \
                       "its projection would be made up at random, another image each run (a component from " \
                       "another model?)"
            continue
        if not (scheduler or (_is_module(cls) and str(entry[0]) == "diffusers")):
            continue  # (tokenizers and processors are checked on load)
        config = path / key / ("scheduler_config.json" if scheduler else "config.json")
        try:
            saved = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue  # (said by the checks before this one, or by the load)
        if not isinstance(saved, str) or saved == entry[1] or scheduler and saved in cls._compatibles:
            continue
        if scheduler:
            return (f"{key}/{config.name} names {saved}, but model_index.json names {entry[1]} for {key}/, and "
                    f"{saved} is not a scheduler that can stand in for it")
        return f"{key}/config.json is a {saved}'s, but model_index.json names {entry[1]} for {key}/ (a component " \
               "from another model?)"
    return ""


def _projection_missing(folder: Path, class_name: str) -> str:
    """The class a transformers model's config names (``architectures``) where the index's class adds a
    projection it lacks ("" otherwise): a ``CLIPTextModel`` (Flux's, SD 1.5's) where SD3 wants a
    ``CLIPTextModelWithProjection``; transformers then initialises the projection at random, unsaid, so
    the same seed made another image each run (outside test 129). Other differences load as they did
    (an encoder-only class from a whole model's weights is usual)."""
    try:
        archs = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError, RecursionError):
        return ""
    if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        return ""
    if class_name.endswith("WithProjection") and class_name not in archs and not any(
            a.endswith("WithProjection") for a in archs):
        return archs[0]
    return ""


def check_model_name(name: str) -> None:
    """ValueError unless ``name`` can name a pipeline: a built-in model, a folder, or a hub id
    (``ORG/NAME``). Cheap (no torch, no diffusers): commands say a typo before loading anything."""
    if name in MODELS:
        return
    if name.startswith(("tiny-", "arch:")):
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(MODELS)}")
    if Path(name).expanduser().exists():
        return
    # a path, not a hub id: written as one, or ORG/NAME whose ORG is a folder here (outside test 101:
    # `models/sd3` mistyped was looked up on the hub, a DNS query that failed offline after 8 s)
    if name.startswith(("./", "../", "/", "~")) or name.endswith("/") or Path(name).parent.name and \
            Path(name).expanduser().parent.is_dir():
        raise ValueError(f"{name}: no such folder (a built-in model is one of {', '.join(MODELS)}; `trident models`)")
    if name.count("/") != 1:  # a typo of a built-in name is not looked up on the hub (a DNS query, 6 s offline)
        raise ValueError(f"unknown model {name!r}: not a built-in model ({', '.join(MODELS)}; `trident models`), "
                         "not a folder here, and not a hub id (ORG/NAME)")


@contextlib.contextmanager
def _no_progress_bars():
    """diffusers' and transformers' loading bars off (outside test 110: two bars a component on the
    terminal of `trident generate`, and in a server's log at every worker's restart), as they were after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in was:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in was:
            if on:
                lib.enable_progress_bar()


def load_pipeline(name: str, device: str = "cpu", dtype="float32") -> "StagedPipeline":
    """Load a pipeline by registry name, directory or hub id, as stage executors."""
    from .builders import BUILDERS, build
    from .staged import FAMILIES, PIPELINE_CLASSES

    torch_dtype = _torch_dtype(dtype)
    if name in BUILDERS:
        family, tiny, _ = BUILDERS[name]
        pipe = build(name, device=device, dtype=torch_dtype)
        return FAMILIES[family](pipe, name, tiny=tiny)
    check_model_name(name)

    from diffusers import DiffusionPipeline

    path = Path(name).expanduser()
    if path.exists():
        try:
            str(path.resolve()).encode("utf-8")
        except UnicodeEncodeError:  # (outside test 101: a different library's error at each try)
            raise ValueError(f"{name.encode('utf-8', 'backslashreplace').decode()}: the folder's path is not valid "
                             "UTF-8 (the weights and tokenizer libraries take UTF-8 paths only); rename it") from None
        index = path / "model_index.json"
        if not path.is_dir():  # (outside test 101: a file read "no model_index.json")
            raise ValueError(f"{name} is a file, not a diffusers pipeline directory")  # (as typed: ./x, ~/x)
        if not index.is_file():
            raise ValueError(f"{name} is not a diffusers pipeline directory (no model_index.json)")
        try:
            spec = json.loads(index.read_text(encoding="utf-8"))
            class_name = spec["_class_name"]
        except RecursionError:  # (outside test 101: a traceback)
            raise ValueError(f"cannot load pipeline {name!r}: {index} is not a diffusers model index (JSON nested "
                             "too deep)") from None
        except (ValueError, TypeError, KeyError, OSError) as exc:  # (UnicodeDecodeError is a ValueError)
            why = "no _class_name" if isinstance(exc, (KeyError, TypeError)) else str(exc)
            raise ValueError(f"cannot load pipeline {name!r}: {index} is not a diffusers model index ({why})") from None
        if not isinstance(class_name, str) or class_name not in PIPELINE_CLASSES:  # before diffusers looks it up
            raise ValueError(f"{name}: pipeline class {class_name} is not supported; supported: "
                             f"{', '.join(PIPELINE_CLASSES)}")
        _check_components(name, class_name, spec)
        for key, entry in _named(spec):  # (outside test 101: diffusers named the pipeline's folder, not the missing one)
            sub = path / key
            if sub.is_symlink() and not sub.exists():
                raise ValueError(f"cannot load pipeline {name!r}: {key}/: a link to {os.readlink(sub)}, which does not "
                                 "exist (or loops)")
            if not sub.is_dir():
                raise ValueError(f"cannot load pipeline {name!r}: {key}/: " + ("not a folder" if sub.exists() else
                                 "missing") + f" (model_index.json names {entry[0]}.{entry[1]} for it)")
            cls = _component_class(entry)
            missing = files_missing(sub, str(entry[1]), _is_module(cls))
            if missing:  # (outside test 110: diffusers said it after loading the components before it)
                raise ValueError(f"cannot load pipeline {name!r}: {missing}")
        damaged = weights_problems(path)
        if damaged:  # (said before loading: safetensors' own error names no file, with a long traceback)
            raise ValueError(f"cannot load pipeline {name!r}: " + "; ".join(damaged[:3]) +
                             (f" (and {len(damaged) - 3} more)" if len(damaged) > 3 else ""))
        other = _saved_as_other(path, spec)
        if other:
            raise ValueError(f"cannot load pipeline {name!r}: {other}")
        too_big = _size_problem(name, path, spec, torch_dtype.itemsize, str(device).split(":")[0])
        if too_big:
            raise ValueError(too_big)
        source = str(path)
        # Optional components saved as absent (SD3 without T5, say) must be passed as None.
        absent = {k: None for k, v in spec.items() if isinstance(v, list) and v[:1] == [None]}
    else:  # (a hub id: check_model_name refused the rest)
        class_name, source, absent = None, name, {}
    try:
        with _no_progress_bars():
            pipe = DiffusionPipeline.from_pretrained(source, dtype=torch_dtype, **absent)
    except OSError as exc:  # a directory, or a hub id (ORG/NAME) not reachable or not there
        raise ValueError(f"cannot load pipeline {name!r}: {_root_cause(exc)}") from exc
    except Exception as exc:
        if not path.exists():
            raise
        tokenizer = failing_tokenizer(path, spec)
        if tokenizer:  # (a file of it missing: the library's message names neither)
            raise ValueError(f"cannot load pipeline {name!r}: {tokenizer}") from exc
        # a component whose config.json holds what its class cannot take (a string for a size, a
        # negative head count): the library's traceback, said in a line
        raise ValueError(f"cannot load pipeline {name!r}: {type(exc).__name__}: {_root_cause(exc)} (a component's "
                         "config.json holds a value its class cannot take?)") from exc
    class_name = class_name or type(pipe).__name__
    family = PIPELINE_CLASSES.get(class_name)
    if family is None:
        raise ValueError(
            f"{name}: pipeline class {class_name} is not supported; supported: {', '.join(PIPELINE_CLASSES)}"
        )
    mismatched = FAMILIES[family].mismatches(pipe)
    if mismatched:  # (outside test 124: a traceback at the first decode)
        raise ValueError(f"cannot load pipeline {name!r}: " + "; ".join(mismatched))
    pipe.to(device)
    return FAMILIES[family](pipe, name, tiny=False)
