"""onnxscale: analyze and scale convolutional networks given only their ONNX file, and
measure what scaling does to runtime on ONNX Runtime's execution providers.

The Python API (`onnxscale.api`, re-exported here) does what the command line does:

    >>> import onnxscale
    >>> onnxscale.analyze("zoo:efficientnet-b0").flops
    385814752

``import onnxscale`` is cheap: the heavy modules load when a function is first called.
"""

from .api import (Analysis, Figures, Prediction, ReportSummary, ScalePlan, ScaleResult,
                  SweepSummary, analyze, bench, load_results, plan, predict, profile, report, scale, sweep)
from .errors import Error, OnnxscaleError, UsageError
from .version import __version__

__all__ = ["Analysis", "Error", "Figures", "OnnxscaleError", "Prediction", "ReportSummary", "Row",
           "ScalePlan", "ScaleResult", "SweepSummary", "UsageError", "__version__", "analyze",
           "bench", "load_results", "plan", "predict", "profile", "report", "scale", "sweep"]


def __getattr__(name: str):
    """`Row` (a bench measurement) is imported on first use: its package loads onnx."""
    if name == "Row":
        from .runtime.row import Row

        return Row
    raise AttributeError(f"module 'onnxscale' has no attribute {name!r}")
