"""How ``bench`` measures: the settings of one invocation, and what they mean per provider
(IO binding, CUDA graphs, which precision reaches the model).  The defaults below are the
timing method's: see `runner` for the steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from . import providers as P

if TYPE_CHECKING:
    from .inputs import PreparedModel


DEFAULT_SECONDS = 3.0


MIN_RUNS = 5


MAX_RUNS = 1_000_000


WARMUP_TOLERANCE = 0.05


WARMUP_MAX_RUNS = 200


WARMUP_MAX_SECONDS = 15.0


@dataclass
class BenchSettings:
    """How to measure; one object for a whole ``bench`` invocation."""

    threads: int | None = None           # intra-op threads; None = onnxruntime's default
    precision: str = "fp32"               # fp32 | fp16
    warmup: int | None = None             # None = adaptive
    runs: int | None = None               # exact number of timed runs, or
    seconds: float | None = None          # a time budget (default DEFAULT_SECONDS)
    io_binding: bool | None = None        # None = on for device providers only
    cuda_graph: bool = False
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    session_config: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    cache_dir: Path | None = None
    seed: int = 0
    capture_log: bool = True              # swallow onnxruntime's native log (reasons parsed)
    warmup_max_seconds: float = WARMUP_MAX_SECONDS
    min_runs: int = MIN_RUNS
    check_outputs: bool = True            # compare outputs with the CPU fp32 reference
    rounds: int = 1                       # times each configuration is timed (`rounds`)
    output_tolerance: float | None = None  # relative L2; None = agreement.TOLERANCE


def effective_io_binding(provider: str, settings: BenchSettings) -> bool:
    if settings.cuda_graph and provider in P.CUDA_GRAPH_OPTION:
        return True  # graph replay needs fixed buffer addresses
    if settings.io_binding is None:
        return provider in P.DEVICE_MEMORY
    return settings.io_binding


def effective_cuda_graph(provider: str, settings: BenchSettings) -> bool:
    return settings.cuda_graph and provider in P.CUDA_GRAPH_OPTION


def uses_fp16_model(provider: str, settings: BenchSettings) -> bool:
    """How fp16 reaches each provider.  TensorRT: a builder flag on the fp32 model
    (``trt_fp16_enable``; TensorRT may keep layers in fp32 where that is faster).  Every other
    provider, TensorRT-RTX included (it has no such flag and builds what the model's types
    say), runs an fp16 copy of the model."""
    return settings.precision == "fp16" and provider != P.TENSORRT


def precision_note(provider: str, settings: BenchSettings) -> str | None:
    """What fp16 means on this provider, when it is not simply 'an fp16 model'."""
    if settings.precision == "fp16" and provider == P.TENSORRT:
        return ("fp16 by TensorRT's builder flag on the fp32 model (trt_fp16_enable: "
                "deprecated in TensorRT 10.12, gone in 11; an fp16 model is the lasting way)")
    return None


def key_options(provider: str, prepared: PreparedModel, settings: BenchSettings) -> dict:
    """What identifies a configuration beyond model, provider, batch and machine."""
    return {
        "threads": settings.threads,
        "precision": settings.precision,
        "io_binding": effective_io_binding(provider, settings),
        "cuda_graph": effective_cuda_graph(provider, settings),
        "provider_options": dict(sorted(settings.provider_options.get(provider, {}).items())),
        "session_config": dict(sorted(settings.session_config.items())),
        "inputs": {s.name: list(s.dims) for s in prepared.specs},
    }


def positive_int(value: str | int | None, flag: str, *, allow_zero: bool = False) -> int | None:
    """A count given on the command line (or in the API), refused in one line when it is not
    a whole number at least 1 (or 0 with ``allow_zero``)."""
    if value is None:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{flag} '{value}': expected a whole number") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise UsageError(f"{flag} '{value}': must be {'>= 0' if allow_zero else 'at least 1'}")
    return number


def parse_batches(spec: str | int | list[int] | None) -> list[int | None]:
    """``1,8,64`` (or an int, or a list of them) -> [1, 8, 64]; None keeps the model's batch."""
    if spec is None:
        return [None]
    if not isinstance(spec, str):
        spec = ",".join(str(b) for b in (spec if isinstance(spec, (list, tuple)) else [spec]))
    batches: list[int | None] = []
    for item in spec.split(","):
        number = positive_int(item, "--batch")
        if number is None or item.strip() == "":
            raise UsageError(f"--batch '{spec}': expected sizes like 1,8,64")
        if number not in batches:
            batches.append(number)
    return batches


def make_settings(providers: list[str], *, threads=None, precision: str = "fp32",
                  warmup="auto", runs=None, seconds=None, io_binding: bool | None = None,
                  cuda_graph: bool = False, provider_options=(), input_shapes=(),
                  cache_dir=None, check_outputs: bool = True, output_tolerance=None,
                  ep_libraries=(), rounds=1, debug: bool = False) -> BenchSettings:
    """`BenchSettings` from the values ``bench`` and ``sweep`` take on the command line (and
    the API passes on): every value checked, a bad one refused in one line."""
    from ..model import parse_input_shapes
    from .providers import parse_provider_options

    if precision not in ("fp32", "fp16"):
        raise UsageError(f"--precision '{precision}': expected fp32 or fp16")
    if runs is not None and seconds is not None:
        raise UsageError("--runs and --seconds: give one or the other")
    seconds_value = None
    if seconds is not None:
        try:
            seconds_value = float(seconds)
        except ValueError:
            raise UsageError(f"--seconds '{seconds}': expected a number of seconds") from None
        if not seconds_value > 0 or seconds_value == float("inf"):
            raise UsageError(f"--seconds '{seconds}': must be a positive number")
    warm = None if warmup is None or str(warmup).strip().lower() == "auto" else positive_int(
        warmup, "--warmup", allow_zero=True)
    tolerance = None
    if output_tolerance is not None:
        try:
            tolerance = float(output_tolerance)
        except ValueError:
            raise UsageError(f"--output-tolerance '{output_tolerance}': expected a number like "
                             f"1e-3") from None
        if not 0 <= tolerance < float("inf"):
            raise UsageError(f"--output-tolerance '{output_tolerance}': must be >= 0")
    if ep_libraries:
        from . import plugins

        for library in ep_libraries:
            if not Path(library).expanduser().is_file():
                raise UsageError(f"--ep-library {library}: no such file")
            plugins.add_library(library)
    per_provider, session_config = parse_provider_options(tuple(provider_options or ()),
                                                          providers)
    return BenchSettings(
        threads=positive_int(threads, "--threads"), precision=precision, warmup=warm,
        runs=positive_int(runs, "--runs"), seconds=seconds_value, io_binding=io_binding,
        cuda_graph=cuda_graph, provider_options=per_provider, session_config=session_config,
        input_shapes=input_shapes if isinstance(input_shapes, dict)
        else parse_input_shapes(tuple(input_shapes or ())),
        cache_dir=Path(cache_dir) if cache_dir else None, capture_log=not debug,
        check_outputs=check_outputs, output_tolerance=tolerance,
        rounds=positive_int(rounds, "--rounds") or 1)
