"""onnxscale: analyze and scale convolutional networks given only their ONNX file."""

__version__ = "0.1.0"
