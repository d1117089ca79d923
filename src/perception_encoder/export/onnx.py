"""ONNX export of the image, text and video encoders, checked against PyTorch with onnxruntime.

    from perception_encoder.export import export_onnx
    export_onnx(model, "pe-core-b16-image.onnx", what="image")   # pixels (B, 3, S, S) -> (B, D)
    export_onnx(model, "pe-core-b16-text.onnx", what="text")     # token_ids (B, L) int64 -> (B, D)
    export_onnx(model, "pe-core-b16-video.onnx", what="video")   # frames (B, N, 3, S, S) -> (B, D)

Graphs have a dynamic batch (and a dynamic frame count for video; a dynamic length up to the context for
text, so callers can drop what follows the last end-of-text token, as ``OnnxEncoder`` does). The image
size is fixed at export (RoPE and position tables are built for its grid). Models whose weights exceed
2 GB are written with their tensors in one external-data file beside the graph, ``<name>.onnx.data``
(protobuf cannot hold more in one message). The graph carries its own description in the ONNX metadata
(``pe_what``, ``pe_config``, ``pe_image_size``, ``pe_normalize`` ...), which ``runtime.OnnxEncoder`` reads.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``); it needs the ``onnx`` package, and the
check needs ``onnxruntime`` (``pip install 'perception-encoder[export]'``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..clip import pool_frames
from ..configs import TextConfig, config_to_dict

What = Literal["image", "text", "video"]
WHATS: tuple[str, ...] = ("image", "text", "video")
DEFAULT_OPSET = 17
# protobuf's hard limit on one serialised message; weights above it go to an external-data file
PROTOBUF_LIMIT = 2**31
CHECK_TOLERANCE = 1e-4


# --- the exported modules --------------------------------------------------------------------------------


class ImageGraph(nn.Module):
    """pixels ``(B, 3, S, S)`` float32 -> embedding ``(B, D)`` (PE-Core) or tokens ``(B, T, W)``."""

    def __init__(self, visual: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.visual = visual
        self.normalize = normalize

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.visual(pixels)
        return F.normalize(x, dim=-1) if self.normalize else x


class VideoGraph(nn.Module):
    """frames ``(B, N, 3, S, S)`` -> ``(B, D)``: ``clip.pool_frames`` of the N frame embeddings, as
    ``CLIP.encode_video``."""

    def __init__(self, visual: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.visual = visual
        self.normalize = normalize

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, n = frames.shape[0], frames.shape[1]
        return pool_frames(self.visual(frames.flatten(0, 1)).reshape(b, n, -1), self.normalize)


class TextGraph(nn.Module):
    """token_ids ``(B, L)`` int64, ``L <= context`` -> ``(B, D)``, pooled at each row's largest id (EOT).

    The same arithmetic as ``TextTransformer.forward`` without its eager-only parts (value checks and
    trimming read tensor values, which a static graph cannot)."""

    def __init__(self, text: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.text = text
        self.normalize = normalize

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        x = self.text.forward_features(token_ids)
        eot = token_ids.argmax(dim=-1, keepdim=True)  # (B, 1)
        pooled = torch.gather(x, 1, eot.unsqueeze(-1).expand(-1, -1, x.shape[-1])).squeeze(1)
        out = pooled @ self.text.text_projection
        return F.normalize(out, dim=-1) if self.normalize else out


# --- export ----------------------------------------------------------------------------------------------


def _towers(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(vision tower, text tower) of a CLIP model or a vision tower."""
    from ..clip import CLIP
    from ..vision import VisionTransformer

    if isinstance(model, CLIP):
        return model.visual, model.text
    if isinstance(model, VisionTransformer):
        return model, None
    raise TypeError(f"expected a perception_encoder CLIP or VisionTransformer, got {type(model).__name__}")


def _graph_and_inputs(
    model: nn.Module, what: str, image_size: int, normalize: bool, num_frames: int
) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[str], dict]:
    visual, text = _towers(model)
    if what == "text":
        if text is None:
            raise ValueError("what='text' needs a CLIP model with a text tower (PE-Core), not a vision tower")
        ctx = text.config.context_length
        ids = torch.zeros(2, ctx, dtype=torch.long)
        ids[:, 0] = 49406
        ids[:, 1 : ctx - 1] = torch.randint(
            1, 49000, (2, ctx - 2), generator=torch.Generator().manual_seed(0)
        )
        ids[:, ctx - 1] = text.config.vocab_size - 1
        axes = {"token_ids": {0: "batch", 1: "length"}, "embedding": {0: "batch"}}
        return TextGraph(text, normalize), (ids,), ["token_ids"], ["embedding"], axes
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    out_name = "embedding" if visual.config.pool_type != "none" else "tokens"
    if what == "image":
        axes = {"pixels": {0: "batch"}, out_name: {0: "batch"}}
        return ImageGraph(visual, normalize), (x,), ["pixels"], [out_name], axes
    if out_name == "tokens":
        raise ValueError("what='video' needs a pooled model (PE-Core); this tower returns tokens")
    frames = torch.randn(2, num_frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    axes = {"frames": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}}
    return VideoGraph(visual, normalize), (frames,), ["frames"], ["embedding"], axes


def _metadata(
    model: nn.Module, what: str, image_size: int, normalize: bool, name: str | None
) -> dict[str, str]:
    visual, text = _towers(model)
    tower = text if what == "text" else visual
    meta = {
        "pe_what": what,
        "pe_config": tower_config_json(tower.config),
        "pe_normalize": str(int(normalize)),
        "pe_output_dim": str(tower.config.output_dim or tower.config.width),
    }
    if what == "text":
        meta["pe_context_length"] = str(text.config.context_length)
        meta["pe_vocab_size"] = str(text.config.vocab_size)
    else:
        meta["pe_image_size"] = str(image_size)
    if name:
        meta["pe_model"] = name
    return meta


def tower_config_json(config) -> str:
    """The config of one tower as JSON with a ``type`` tag ("vision" or "text")."""
    if isinstance(config, TextConfig):
        return json.dumps({"type": "text", **dataclasses.asdict(config)})
    return json.dumps(config_to_dict(config))


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    what: What = "image",
    image_size: int | None = None,
    normalize: bool = False,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    check: bool = True,
    num_frames: int = 8,
    name: str | None = None,
) -> Path:
    """Export one encoder of ``model`` (a ``CLIP`` or a ``VisionTransformer``) to ``path`` (``.onnx``).

    ``what``: ``"image"`` (input ``pixels`` ``(B, 3, S, S)``), ``"text"`` (``token_ids`` ``(B, L)`` int64)
    or ``"video"`` (``frames`` ``(B, N, 3, S, S)``); the output is ``embedding`` ``(B, D)`` (``tokens``
    ``(B, T, W)`` for an image graph of a token model). ``image_size``: ``S`` (default: the model's native
    size). ``normalize`` L2-normalises the output (video: each frame, before the mean). ``external_data``:
    write the weights to ``<path>.data`` (default: when they exceed 2 GB). ``check`` runs the graph in
    onnxruntime on fresh inputs of other batch sizes (and lengths / frame counts) and raises
    ``RuntimeError`` when its relative error against PyTorch exceeds 1e-4. ``num_frames`` is the frame
    count of the example video (any count works at run time). ``name`` is recorded in the metadata.

    The model is exported in float32 on the CPU (a copy is made when it is in another dtype or device).
    Returns ``path``.
    """
    if what not in WHATS:
        raise ValueError(f"what must be one of {', '.join(WHATS)}, got {what!r}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: the output file must end in .onnx")
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs the onnx package: pip install 'perception-encoder[export]'"
        ) from exc
    visual, _ = _towers(model)
    size = int(image_size or visual.config.image_size)
    if size < visual.config.patch_size:
        raise ValueError(f"image_size {size} is smaller than one {visual.config.patch_size}-pixel patch")
    first = next(model.parameters())
    if first.dtype != torch.float32 or first.device.type != "cpu":
        import copy

        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    model = model.eval()
    graph, inputs, in_names, out_names, axes = _graph_and_inputs(model, what, size, normalize, num_frames)
    big = _param_bytes(graph) > PROTOBUF_LIMIT - 2**26  # leave room for the graph itself
    external = big if external_data is None else bool(external_data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pe-onnx-") as tmp:
        raw = Path(tmp) / "graph.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                graph,
                inputs,
                str(raw),
                input_names=in_names,
                output_names=out_names,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(raw), load_external_data=True)
        for key, value in _metadata(model, what, size, normalize, name).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        # written in full beside the target first, then renamed over it: a failed export (a full disk)
        # leaves an earlier graph at ``path`` intact
        staged = Path(tmp) / path.name
        if external:
            onnx.save_model(
                proto,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=path.name + ".data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(proto, str(staged))
        del proto
        data = path.with_name(path.name + ".data")
        if external:
            os.replace(staged.with_name(staged.name + ".data"), data)
        os.replace(staged, path)
        if not external and data.is_file():
            data.unlink()  # an earlier export's weights, which the new graph does not use
        shutil.rmtree(tmp, ignore_errors=True)
    if check:
        err = check_onnx(model, path, what=what, image_size=size, normalize=normalize)
        if err > CHECK_TOLERANCE:
            raise RuntimeError(
                f"{path}: onnxruntime differs from PyTorch by {err:.2e} relative (> {CHECK_TOLERANCE})"
            )
    return path


# --- check -----------------------------------------------------------------------------------------------


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    what: What = "image",
    image_size: int | None = None,
    normalize: bool = False,
) -> float:
    """The largest relative error of the graph at ``path`` (run by onnxruntime) against ``model`` in PyTorch,
    over inputs other than the export's example: batch 1 and 3; text lengths 5 and the full context;
    video 1 and 3 frames."""
    from .runtime import OnnxEncoder

    enc = OnnxEncoder(path)
    visual, text = _towers(model)
    g = torch.Generator().manual_seed(123)
    errors = []
    with torch.no_grad():
        if what == "text":
            graph = TextGraph(text, normalize)
            ctx = text.config.context_length
            for batch, length in ((1, ctx), (3, min(5, ctx))):
                ids = torch.zeros(batch, ctx, dtype=torch.long)
                ids[:, 0] = 49406
                ids[:, 1 : length - 1] = torch.randint(1, 49000, (batch, max(0, length - 2)), generator=g)
                ids[:, length - 1] = 49407 if text.config.vocab_size > 49407 else text.config.vocab_size - 1
                errors.append(_rel_err(enc.run(ids[:, :length]), graph(ids[:, :length])))
        else:
            size = int(image_size or visual.config.image_size)
            if what == "image":
                graph = ImageGraph(visual, normalize)
                for batch in (1, 3):
                    x = torch.randn(batch, 3, size, size, generator=g)
                    errors.append(_rel_err(enc.run(x), graph(x)))
            else:
                graph = VideoGraph(visual, normalize)
                for batch, frames in ((1, 3), (3, 1)):
                    x = torch.randn(batch, frames, 3, size, size, generator=g)
                    errors.append(_rel_err(enc.run(x), graph(x)))
    return max(errors)
