"""``pe.load``'s branch for PE-AV and PE-A-Frame: find the files, read the config, convert, assign.

Sources (``load_av(name, checkpoint=...)``):

- a released name (``pe-av-large``, ``pe-a-frame-small``, ...): the reference's snapshot on the hub,
  ``facebook/<name>`` at revision ``perception_models`` (``config.json``, ``model.safetensors`` and the
  tokenizer files), through ``weights.hub`` (its cache and ``HF_HUB_OFFLINE`` are honoured);
- ``hf-hub:facebook/<name>[@revision]``: a hub snapshot, ``main`` (transformers' layout) by default;
- a folder (a ``save_pretrained`` folder, or a downloaded snapshot) holding ``config.json`` and the
  weights (``model.safetensors``);
- a weights file: its config is ``<stem>.json`` beside it (``pe.save``) or ``config.json`` in its folder.

The config comes from the files when they have one (so a release always loads under its own sizes), else
from the name given; with neither it is an error. The layout (reference, transformers or this package's)
is read from the keys. The model is built on the meta device and the converted tensors are assigned
(``weights.strict.load_into``); the tokenizer files found beside the weights become ``model.tokenizer``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configs import get_model_info
from ..errors import CheckpointError
from ..input_files import parse_json, read_text
from ..weights.strict import key_problems
from .config_files import config_from_file_dict
from .configs import CONFIG_FILE, TOKENIZER_FILES, WEIGHTS_FILE, AVConfig
from .weights import detect_av_layout, is_frame_checkpoint, to_native_av

log = logging.getLogger("perception_encoder.weights")

_PROCESSOR_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")
_WEIGHT_NAMES = (WEIGHTS_FILE, "pytorch_model.bin")


@dataclass
class Files:
    """Where a model's files are: the weights, and the folder that may hold its config and tokenizer."""

    weights: Path
    folder: Path
    config_file: Path | None = None


# --- recognising an AV source ---------------------------------------------------------------------------


def _safetensors_keys(path: Path) -> set[str]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return set(f.keys())
    except Exception:
        return set()


def _is_av_folder(folder: Path) -> bool:
    config = folder / CONFIG_FILE
    if config.is_file():
        try:
            data = parse_json(read_text(config, "model config"), str(config))
        except ValueError:
            return False
        if isinstance(data, dict) and (
            data.get("model_type") in ("pe_audio", "pe_audio_video")
            or data.get("type") == "av"
            or "audio_visual_model" in data
            or "audio_model" in data
        ):
            return True
    return any((folder / n).is_file() and _is_av_file(folder / n) for n in (WEIGHTS_FILE,))


def _is_av_file(path: Path) -> bool:
    if path.suffix.lower() != ".safetensors":
        return False
    return detect_av_layout(_safetensors_keys(path)) is not None


def is_av_source(name: Any, checkpoint: Any = None) -> bool:
    """Whether ``pe.load(name, checkpoint=checkpoint)`` asks for a PE-AV or PE-A-Frame model: an
    ``AVConfig``, a registered AV name, an AV folder or safetensors file, or an ``hf-hub:`` string of a
    ``pe-av-*`` / ``pe-a-frame-*`` repository. Cheap: at most a file header is read."""
    if isinstance(name, AVConfig):
        return True
    if isinstance(name, str) and not name.startswith("hf-hub:"):
        try:
            return get_model_info(name).is_av
        except KeyError:
            pass
    for value in (name, checkpoint):
        if isinstance(value, str) and value.startswith("hf-hub:"):
            repo = value[len("hf-hub:") :].split("/")[1:2]
            if repo and repo[0].split("@")[0].lower().startswith(("pe-av-", "pe-a-frame-")):
                return True
        elif isinstance(value, (str, os.PathLike)):
            p = Path(value)
            try:
                if p.is_dir():
                    return _is_av_folder(p)
                if p.is_file():
                    return _is_av_file(p)
            except OSError:
                return False
    return False


# --- finding the files -------------------------------------------------------------------------------------


def _hub_snapshot(repo: str, revision: str | None, weights_name: str, what: str) -> Files:
    """Download (or find in the cache) a snapshot's weights, config and tokenizer files."""
    from ..weights.hub import download

    weights = download(repo, weights_name, revision=revision, what=what)
    config = download(repo, CONFIG_FILE, revision=revision, what=f"the config of {what}")
    for optional in (*TOKENIZER_FILES, *_PROCESSOR_FILES):
        try:
            download(repo, optional, revision=revision, what=what)
        except CheckpointError:
            pass  # not every snapshot has every file; the tokenizer is checked when it is used
    return Files(weights=weights, folder=weights.parent, config_file=config)


def _local_files(path: Path) -> Files:
    if path.is_dir():
        weights = next((path / n for n in _WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(
                f"{path}: no weights in this folder (expected {' or '.join(_WEIGHT_NAMES)})"
            )
        config = path / CONFIG_FILE
        return Files(weights=weights, folder=path, config_file=config if config.is_file() else None)
    from ..weights.files import check_checkpoint_path, config_path_for

    weights = check_checkpoint_path(path)
    beside = config_path_for(weights)
    if beside.is_file() and beside != weights:
        return Files(weights=weights, folder=weights.parent, config_file=beside)
    folder_config = weights.parent / CONFIG_FILE
    return Files(
        weights=weights, folder=weights.parent, config_file=folder_config if folder_config.is_file() else None
    )


def locate(name: Any, checkpoint: Any) -> tuple[Files | None, AVConfig | None, str]:
    """The files to read (``None`` for random weights), the config the name gives (if any) and a label."""
    named: AVConfig | None = None
    label = "the PE-AV model"
    source = checkpoint
    if isinstance(name, AVConfig):
        named = name
    elif isinstance(name, str) and not name.startswith("hf-hub:") and _registered(name):
        info = get_model_info(name)
        named, label = info.config, info.name
        if checkpoint is None:
            assert info.hub_repo and info.hub_filename
            return (
                _hub_snapshot(info.hub_repo, info.hub_revision, info.hub_filename, f"weights of {info.name}"),
                named,
                label,
            )
    else:
        if checkpoint is not None:
            raise ValueError(f"name {str(name)!r} is already a checkpoint; do not pass checkpoint= as well")
        source, label = name, str(name)
    if source is None:
        return None, named, label
    if isinstance(source, str) and source.startswith("hf-hub:"):
        from ..weights.hub import parse_hub_spec

        repo, filename, revision = parse_hub_spec(source)
        return _hub_snapshot(repo, revision, filename or WEIGHTS_FILE, source), named, label
    return _local_files(Path(source)), named, label


def _registered(name: str) -> bool:
    try:
        return get_model_info(name).is_av
    except KeyError:
        return False


# --- the config --------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    return parse_json(read_text(path, what, error=CheckpointError), f"{path}: {what}", error=CheckpointError)


def _processor_dict(folder: Path) -> dict[str, Any] | None:
    for name in _PROCESSOR_FILES:
        p = folder / name
        if p.is_file():
            data = _read_json(p, "processor config")
            if isinstance(data, dict):
                return data
    return None


def resolve_config(files: Files, named: AVConfig | None, keys: set[str], layout: str) -> AVConfig:
    """The checkpoint's own config when it has one (merged with the name's fixed frame count), else the
    name's; neither is an error."""
    if files.config_file is None:
        if named is None:
            raise CheckpointError(
                f"{files.weights}: no config.json beside these PE-AV weights; pass the model name "
                "(pe.load('pe-av-large', checkpoint=PATH)) or keep the snapshot's config.json with them"
            )
        return named
    data = _read_json(files.config_file, "model config")
    try:
        config = config_from_file_dict(
            data, frame_model=is_frame_checkpoint(keys, layout), processor=_processor_dict(files.folder)
        )
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{files.config_file}: not a valid PE-AV / PE-A-Frame config ({e})") from e
    if named is not None:
        if config.num_frames is None and named.num_frames is not None:
            config = dataclasses.replace(config, num_frames=named.num_frames)
        if config != named:
            log.info("%s: loaded under the config saved with it (%s)", files.weights, files.config_file)
    return config


# --- checking and loading ------------------------------------------------------------------------------------


def model_class(config: AVConfig) -> type[nn.Module]:
    from .model import PEAudioFrame, PEAudioVisual

    return PEAudioFrame if config.kind == "a-frame" else PEAudioVisual


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_av_state_dict(model: nn.Module, native: dict[str, torch.Tensor], target: str, source: str) -> None:
    """``CheckpointError`` unless ``native`` has exactly ``model``'s keys and shapes, naming a few of each
    problem and, for a PE-AV file given to PE-A-Frame (or back), saying so."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = key_problems(expected, native)
    if not parts:
        return
    has_video = any(k.startswith("video.") for k in native)
    wants_video = any(k.startswith("video.") for k in expected)
    hint = ""
    if has_video != wants_video:
        hint = " The checkpoint holds a " + ("PE-AV" if has_video else "PE-A-Frame") + " model."
    raise CheckpointError(f"{source} does not fit {target}: " + "; ".join(parts) + "." + hint)


def _move_buffers(model: nn.Module, device: torch.device | None) -> None:
    """Derived buffers built on the CPU while loading (the text tower's RoPE tables) -> ``device``."""
    if device is None:
        return
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)


def _attach_tokenizer(model: nn.Module, folder: Path | None) -> None:
    from .text import Tokenizer

    if folder is not None and (
        (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    ):
        model.tokenizer = Tokenizer(folder)


def load_av(
    name: Any,
    *,
    checkpoint: Any = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    strict: bool = True,
) -> nn.Module:
    """A ``PEAudioVisual`` or ``PEAudioFrame`` in eval mode (see the module's docstring for sources).
    ``pretrained=False``: random weights for a name or config (the tokenizer is looked up in the hub
    cache, offline-safe: none when absent)."""
    from ..dtypes import as_dtype
    from ..weights.files import read_state_dict
    from ..weights.strict import load_into

    dtype = as_dtype(dtype) or torch.float32
    if not pretrained:
        if checkpoint is not None:
            raise ValueError("pretrained=False gives random weights; it cannot be combined with checkpoint=")
        if isinstance(name, AVConfig):
            named = name
        elif _registered_str(name):
            named = get_model_info(name).config
        else:
            raise ValueError(f"{name!r}: random weights need a registered name or an AVConfig")
        with torch.device(device if device is not None else "cpu"):
            model = model_class(named)(named)
        return model.to(dtype).eval()

    files, named, label = locate(name, checkpoint)
    if files is None:
        raise ValueError("a config alone has no weights: pass checkpoint=PATH, or pretrained=False")
    raw = read_state_dict(files.weights)
    layout = detect_av_layout(raw)
    if layout is None:
        raise CheckpointError(
            f"{files.weights}: not a PE-AV or PE-A-Frame checkpoint (no audio encoder keys; keys such as "
            f"{_few(sorted(raw))})"
        )
    config = resolve_config(files, named, set(raw), layout)
    source = str(checkpoint or name) if isinstance(checkpoint or name, str) else str(files.weights)
    native = to_native_av(raw, config, layout, source)
    del raw
    build = model_class(config)
    target = label if named is not None else f"the model configured for {files.weights.name}"
    if strict:
        with torch.device("meta"):
            check_av_state_dict(build(config), native, target, source)
    model = load_into(
        lambda: build(config),
        native,
        config=config,  # type: ignore[arg-type]
        target=target,
        source=source,
        device=device,
        dtype=dtype,
        file=files.weights,
        strict=strict,
    )
    _move_buffers(model, torch.device(device) if device is not None else None)
    _attach_tokenizer(model, files.folder)
    return model.eval()


def _registered_str(name: Any) -> bool:
    return isinstance(name, str) and _registered(name)


def save_av(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a PE-AV / PE-A-Frame model as ``path`` (``.safetensors``, this package's layout) with its
    config as ``<stem>.json`` beside it, and its tokenizer files copied into the same folder (when not
    there already), so ``pe.load(path)`` gives the model back with its tokenizer."""
    from ..weights.files import SAFETENSORS_SUFFIX, save_safetensors

    p = Path(path)
    if p.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"{p}: PE-AV models are saved as .safetensors")
    save_safetensors(model, p, model.config)  # type: ignore[arg-type]
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and Path(tokenizer.folder).resolve() != p.parent.resolve():
        for name in TOKENIZER_FILES:
            src = Path(tokenizer.folder) / name
            if src.is_file() and not (p.parent / name).exists():
                shutil.copyfile(src, p.parent / name)
    return p
