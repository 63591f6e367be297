"""ONNX export and ONNX Runtime execution. Importing this package registers the ONNX Runtime transform, its
artifact codec and replay; onnxruntime itself is imported only when a model is exported or run."""
from condense.export.onnx import EXPORT_ADAPTERS, ExportAdapter, ExportSpec, export_onnx, parity
from condense.export.runtime import OnnxRuntimeConfig, OrtModule, OrtSentenceEncoder
from condense.export import gpt as _gpt  # noqa: F401  (registers the tinygpt export adapter)

__all__ = [
    # export
    "export_onnx", "parity", "ExportSpec", "ExportAdapter", "EXPORT_ADAPTERS",
    # runtime
    "OrtModule", "OrtSentenceEncoder", "OnnxRuntimeConfig",
]
