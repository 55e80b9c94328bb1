"""edgehybrid: export hybrid attention + convolution vision models to ONNX, Core ML and TFLite."""

__version__ = "0.1.0"
