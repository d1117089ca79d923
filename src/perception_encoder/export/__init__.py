"""Export to ONNX and run exported graphs with onnxruntime.

- ``export_onnx(model, path, what="image" | "text" | "video")``: a graph with dynamic batch (and frame
  count / text length), checked against PyTorch in onnxruntime.
- ``OnnxEncoder(path)``: an onnxruntime-backed encoder with ``encode_image`` / ``encode_text`` /
  ``encode_video``, used by ``pe embed --backend onnxruntime``.
"""

from __future__ import annotations

from .onnx import WHATS, check_onnx, export_onnx
from .runtime import OnnxEncoder

__all__ = ["WHATS", "OnnxEncoder", "check_onnx", "export_onnx"]
