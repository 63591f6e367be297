"""ONNX export and ONNX Runtime execution; LiteRT (.tflite) export and execution. Importing this package registers
the ONNX Runtime and LiteRT transforms, their artifact codecs and replays; onnxruntime, litert-torch and
ai-edge-litert are imported only when a model is exported or run."""
from condense.export.onnx import EXPORT_ADAPTERS, ExportAdapter, ExportSpec, export_onnx, parity
from condense.export.runtime import OnnxRuntimeConfig, OrtModule, OrtSentenceEncoder
from condense.export.litert_runtime import LiteRtConfig, LiteRtInt8Config, LiteRtModule

__all__ = [
    # export
    "export_onnx", "parity", "ExportSpec", "ExportAdapter", "EXPORT_ADAPTERS",
    # runtime
    "OrtModule", "OrtSentenceEncoder", "OnnxRuntimeConfig",
    # LiteRT
    "LiteRtModule", "LiteRtConfig", "LiteRtInt8Config",
]
