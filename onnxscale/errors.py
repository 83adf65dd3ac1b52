"""The one error type users see.

Anything the user can fix (a bad path, a malformed flag, a model we cannot handle) raises
`OnnxscaleError` (``onnxscale.Error``) with a message that fits on one line and names
the culprit (file, input, node).  The CLI prints it as ``error: <message>`` and exits non-zero; everything else is a bug
and is reported as an internal error (with the traceback only under ``--debug``).
"""


class OnnxscaleError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 1


Error = OnnxscaleError  # the public name: ``except onnxscale.Error``


class UsageError(OnnxscaleError):
    """A malformed command-line value (exit code 2, like click's own usage errors)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line, without ONNX Runtime's
    ``[ONNXRuntimeError] : 1 : FAIL :`` prefix (onnx's and ORT's messages go on with a dump
    of the offending node)."""
    import re

    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
