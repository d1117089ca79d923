"""An encoder backed by onnxruntime, running a graph written by ``export_onnx``.

    from perception_encoder.export import OnnxEncoder
    enc = OnnxEncoder("pe-core-b16-image.onnx")
    emb = enc.encode_image(pixels)          # (B, 3, S, S) -> (B, D) float32 torch.Tensor
    txt = OnnxEncoder("pe-core-b16-text.onnx").encode_text(tok(["a dog"]))

The graph describes itself (ONNX metadata written at export): what it encodes, the input size, the
context length. Text batches are cut after their last end-of-text token before they run, exactly as the
PyTorch tower does. ``run`` may be called from several threads at once (onnxruntime sessions are
thread-safe).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configs import TextConfig, VisionConfig, config_from_dict
from ..finite import check_finite
from ..input_files import parse_json


def _tower_config(data: dict) -> VisionConfig | TextConfig:
    if data.get("type") == "text":
        return TextConfig(**{k: v for k, v in data.items() if k != "type"})
    return config_from_dict(data)


class OnnxEncoder:
    """One exported graph (image, text or video) in an onnxruntime ``InferenceSession``.

    ``providers``: onnxruntime execution providers (default: CPU). ``threads``: intra-op threads (default:
    onnxruntime's choice). Attributes: ``what`` ("image" / "text" / "video"), ``config`` (the tower's
    config), ``image_size`` (image and video graphs), ``context_length`` (text graphs), ``output_dim``,
    ``normalize`` (whether the graph normalises its output), ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(
                "the onnxruntime backend needs onnxruntime: pip install 'perception-encoder[export]'"
            ) from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if "pe_what" not in meta:
            raise ValueError(f"{self.path} was not written by perception_encoder's export_onnx (no pe_what)")
        self.what: str = meta["pe_what"]
        self.config = _tower_config(parse_json(meta["pe_config"], f"{self.path}: pe_config metadata"))
        self.normalize = meta.get("pe_normalize", "0") == "1"
        self.output_dim = int(meta.get("pe_output_dim", 0)) or None
        self.image_size = int(meta["pe_image_size"]) if "pe_image_size" in meta else None
        self.context_length = int(meta["pe_context_length"]) if "pe_context_length" in meta else None
        self.vocab_size = int(meta["pe_vocab_size"]) if "pe_vocab_size" in meta else None
        self.model_name = meta.get("pe_model")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.path)!r}, what={self.what!r})"

    # --- running ----------------------------------------------------------------------------------------

    def run(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Feed ``x`` to the graph as is and return its output as a float32 CPU tensor."""
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if self.what == "text":
            array = array.astype(np.int64, copy=False)
        else:
            array = np.ascontiguousarray(array, dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out)

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        if self.what == "image":
            return self.encode_image(x)
        if self.what == "video":
            return self.encode_video(x)
        return self.encode_text(x)

    def _need(self, what: str) -> None:
        if self.what != what:
            raise ValueError(f"{self.path} encodes {self.what}s, not {what}s (export it with --what {what})")

    def encode_image(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised pixels -> ``(B, D)`` (``(B, T, W)`` for token models)."""
        self._need("image")
        shape = tuple(pixels.shape)
        if len(shape) != 4 or shape[1] != 3 or shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"pixels must have shape (B, 3, {self.image_size}, {self.image_size}) for {self.path.name}, "
                f"got {shape}"
            )
        return self.run(pixels)

    def encode_video(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(B, N, 3, S, S)`` -> ``(B, D)``, the mean of the N frame embeddings."""
        self._need("video")
        shape = tuple(frames.shape)
        if len(shape) != 5 or shape[2] != 3 or shape[3:] != (self.image_size, self.image_size):
            raise ValueError(
                f"frames must have shape (B, N, 3, {self.image_size}, {self.image_size}) for "
                f"{self.path.name}, got {shape}"
            )
        return self.run(frames)

    def encode_text(self, token_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Token ids ``(B, L)``, ``L <= context_length`` -> ``(B, D)``; columns after the batch's last
        end-of-text token are not computed (they cannot change the result)."""
        self._need("text")
        ids = (
            token_ids.detach().cpu().numpy() if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
        )
        if ids.ndim != 2:
            raise ValueError(f"token_ids must have shape (B, L), got {tuple(ids.shape)}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"token_ids must be integers, got {ids.dtype}")
        if ids.shape[1] > (self.context_length or ids.shape[1]):
            raise ValueError(f"token_ids have length {ids.shape[1]} > context length {self.context_length}")
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or (self.vocab_size is not None and hi >= self.vocab_size):
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is out of range [0, {self.vocab_size})")
            ids = ids[:, : int(ids.argmax(axis=1).max()) + 1]
        return self.run(ids)

    # --- the embedding pipeline's Encoder protocol ----------------------------------------------------------

    def features(self, spec: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """pixels ``(B, 3, S, S)`` -> ``(B, D)`` float32 (``embedding.Encoder``): the graph's embedding, or
        the mean output patch token of a token model. Only an image graph and the pooled features
        (``FeatureSpec()``) apply: an exported graph has no intermediate layers."""
        if self.what != "image":
            raise ValueError(
                f"{self.path.name} encodes {self.what}s; image and video embedding needs an image graph "
                "(pe export onnx --what image); videos are embedded frame by frame with it"
            )
        if spec is not None and not spec.is_pooled:
            raise ValueError(
                "--layer needs the torch backend: an exported graph only gives the final embedding"
            )
        prefix = int(self.config.use_cls_token)

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            out = self.encode_image(pixels)
            out = out[:, prefix:].mean(dim=1) if out.ndim == 3 else out  # token models: mean patch token
            return check_finite(out, f"a batch of {len(pixels)} image(s) in {self.path.name}")

        return encode

    @property
    def vision_config(self) -> VisionConfig | None:
        return self.config if isinstance(self.config, VisionConfig) else None

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "what": self.what,
            "model": self.model_name,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "output_dim": self.output_dim,
            "normalize": self.normalize,
            "providers": self.session.get_providers(),
        }
