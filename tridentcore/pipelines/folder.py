"""What is wrong with a saved pipeline folder, said in a line that names the file or component.

A diffusers folder loads component by component (``from_pretrained``), and a damaged one failed deep
inside a library: a truncated or emptied text-encoder ``model.safetensors`` raised safetensors' own
error with a 58-line traceback (the denoiser's and the VAE's are caught by diffusers and named), and
a tokenizer folder missing its ``tokenizer.json`` said "Couldn't instantiate the backend tokenizer
from one of:" and no more. Here:

* :func:`files_missing`, before loading: a component folder without the files its kind loads from
  (a model's ``config.json`` and weights, a scheduler's config, a tokenizer's vocabulary), which
  diffusers said only after loading the components before it (with its progress bar), and a
  tokenizer with advice to install sentencepiece (outside test 110);
* :func:`weights_problems`, before loading: every ``.safetensors`` file's header is read (8 bytes of
  length, then JSON) and checked against the file's size, without loading a tensor (a dangling link
  or a folder in its place is said as such), and every JSON file (configs, shard indexes,
  tokenizers) must parse;
* :func:`failing_tokenizer`, after a load failed: which tokenizer component cannot be loaded alone,
  and the files its folder holds;
* :func:`stored_elements`: how many numbers a component's weights hold (against what its config
  describes, counted on the meta device before loading), and :func:`available_gib`, the host's
  memory for it;
* :func:`fingerprint`: a cheap digest of the folder, by which a restarted worker tells it was replaced.

Torch-free (transformers is imported only by :func:`failing_tokenizer`, on the error path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["available_gib", "failing_tokenizer", "files_missing", "fingerprint", "stored_elements", "weights_problems"]

_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header
_MAX_JSON_BYTES = 64 * 2**20  # a component's JSON files parsed before loading (a tokenizer.json: a few MB)


def _safetensors_problem(path: Path) -> str:
    """Why ``path`` is not a whole safetensors file ("" when it is)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes: empty or cut short (not a safetensors file)"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_HEADER_BYTES):
                return f"cut short, or not a safetensors file (its header says {n} bytes; the file has {size})"
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except ValueError:  # (UnicodeDecodeError is one)
        return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    end = 0
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
            return f"not a safetensors file (tensor {key[:40]!r} has no data offsets)"
        end = max(end, offsets[1])
    need = 8 + n + end
    if need != size:
        how = "cut short" if size < need else "has bytes past its tensors"
        return f"{how}: its tensors need {need} bytes, the file has {size}"
    return ""


def available_gib() -> float | None:
    """The memory available to a new process now (``MemAvailable``), GiB; None where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def fingerprint(folder: Path) -> str:
    """A digest of what a pipeline folder holds, read cheaply: its model index, its components'
    configs, and each weights file's name, size and header (the tensors' names, shapes and offsets,
    not their values). A worker restarted after the folder was replaced tells by it (outside test 101:
    it served what the folder then held, another model, under the old name, without a word)."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted([*folder.glob("*.json"), *folder.glob("*/*.json"), *folder.glob("*.safetensors"),
                     *folder.glob("*/*.safetensors")]):
        try:
            with f.open("rb") as fh:
                if f.suffix == ".json":
                    data = fh.read(_MAX_JSON_BYTES)
                else:
                    head = fh.read(8)
                    data = head + fh.read(min(int.from_bytes(head, "little"), _MAX_HEADER_BYTES))
                    data += str(f.stat().st_size).encode()
        except OSError:
            data = b"?"
        digest.update(str(f.relative_to(folder)).encode(errors="surrogateescape") + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def stored_elements(folder: Path) -> int | None:
    """How many numbers the ``.safetensors`` files of one component's folder hold (from their headers;
    checked whole by :func:`weights_problems` first), or None where it holds none."""
    total, found = 0, False
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with f.open("rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        except (OSError, ValueError, RecursionError):
            return None
        for key, tensor in header.items():
            shape = tensor.get("shape") if isinstance(tensor, dict) and key != "__metadata__" else None
            if isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape):
                count = 1
                for n in shape:
                    count *= n
                total += count
                found = True
    return total if found else None


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")  # (or a sentencepiece ``.model``, a ``.tiktoken``)


def files_missing(sub: Path, class_name: str, is_model: bool) -> str:
    """What a component folder lacks of the files its kind is loaded from ("" if nothing): a model
    (``is_model``: a torch module) its ``config.json`` and a weights file (or a shard index), a
    scheduler its ``scheduler_config.json``, a tokenizer a vocabulary file. ``sub`` is a folder."""
    names = {p.name for p in sub.iterdir()}
    missing = ""
    if is_model:
        if "config.json" not in names:
            missing = "config.json"
        elif not any(n.endswith((".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")) for n in names):
            missing = "weights file (*.safetensors or *.bin)"
    elif "Scheduler" in class_name:
        if "scheduler_config.json" not in names:
            missing = "scheduler_config.json"
    elif "Tokenizer" in class_name:
        if not any(n in names for n in _TOKENIZER_FILES) and not any(n.endswith((".model", ".tiktoken")) for n in names):
            missing = "tokenizer file (tokenizer.json, vocab.json, vocab.txt or a sentencepiece .model)"
    if not missing:
        return ""
    held = ", ".join(sorted(names)[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") or "nothing"
    return f"{sub.name}/ ({class_name}) has no {missing}; it holds: {held}"


def weights_problems(folder: Path) -> list[str]:
    """``relative/path.safetensors: why`` for each damaged weights file of a pipeline folder (its
    components' folders and the folder itself)."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors"))
    out = []
    for f in files:
        if f.is_symlink() and not f.exists():
            why = f"a link to {os.readlink(f)}, which does not exist"
        elif f.is_dir():
            why = "a folder, not a weights file"
        elif not f.is_file():
            why = "not a regular file"
        else:
            why = _safetensors_problem(f)
        if why:
            out.append(f"{f.relative_to(folder)}: {why}")
    for f in sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json")):  # configs, indexes, tokenizers
        try:
            if f.is_file() and f.stat().st_size <= _MAX_JSON_BYTES:
                json.loads(f.read_bytes())
        except OSError as exc:
            out.append(f"{f.relative_to(folder)}: cannot be read ({exc.strerror or type(exc).__name__})")
        except ValueError as exc:  # (UnicodeDecodeError is one)
            out.append(f"{f.relative_to(folder)}: not JSON ({str(exc)[:120]})")
        except RecursionError:  # (outside test 101: a traceback)
            out.append(f"{f.relative_to(folder)}: not JSON (nested too deep)")
    return out


def failing_tokenizer(folder: Path, spec: dict) -> str:
    """After the whole pipeline failed to load: ``component (Class in folder/): why; it holds: files``
    for the first tokenizer of the model index that cannot be loaded alone ("" if each can)."""
    import transformers

    from . import _root_cause

    for key, entry in spec.items():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) and "Tokenizer" in entry[1]):
            continue
        cls = getattr(transformers, entry[1], None)
        sub = folder / key
        if cls is None or not sub.is_dir():
            continue
        try:
            cls.from_pretrained(str(sub))
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            held = ", ".join(sorted(p.name for p in sub.iterdir())[:8]) or "nothing"
            return f"{key} ({entry[1]} in {key}/): {_root_cause(exc)}; {key}/ holds: {held}"
    return ""
