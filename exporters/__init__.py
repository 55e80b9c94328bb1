"""Exporters: one file per target (ONNX, Core ML, TFLite), each registered under its target name."""
