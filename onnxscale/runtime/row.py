"""One measured configuration: the record `bench` makes, the store keeps, and sweep cells,
`results` and `report` read.

Its fields are declared here, once; everything else reads them by name.  A row is stored as
its dict (`Row.to_dict`) in the results database and read back with `Row.from_dict`, which
keeps fields an older or newer onnxscale wrote under ``extra`` rather than failing on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# timing statistics, in milliseconds (throughput: items per second)
METRICS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "cv", "min_ms",
           "max_ms", "throughput", "runs")

# the unit of every numeric field, as ``--json`` states it
UNITS = {**{name: "ms" for name in METRICS if name.endswith("_ms")},
         "session_create_ms": "ms", "first_run_ms": "ms", "engine_build_ms": "ms",
         "cv": "ratio (std / mean)", "throughput": "items/s", "runs": "count",
         "warmup_runs": "count", "peak_host_mb": "MiB", "measured_at": "s since the epoch",
         "batch": "items", "threads": "count", "p50_ci_ms": "ms (95% interval)",
         "raw_times": "ms, float32, zlib, base64"}

# the columns of ``results --csv`` and a report's rows.csv, in order
CSV_COLUMNS = ("model", "model_hash", "provider", "environment", "batch", "precision",
               "threads", "status", *METRICS, "p50_ci_low_ms", "p50_ci_high_ms",
               "rounds_done", "unstable", "unstable_reasons", "session_create_ms", "first_run_ms",
               "engine_build_ms", "peak_host_mb", "nodes_on_provider", "nodes_total",
               "flops_share_on_provider", "outputs_rel_l2", "outputs_ok", "ort_version",
               "fingerprint", "measured_at", "reason")


@dataclass
class Row:
    """A (model, provider, batch, options, machine) configuration and what timing it gave.

    ``available`` is False (with ``reason``) when the provider could not run the model;
    ``status`` is ``ok``, ``unavailable`` or ``failed``.  Times are milliseconds."""

    model: str
    model_hash: str
    provider: str                     # short name: cpu, cuda, tensorrt, ...
    provider_name: str                # onnxruntime's: CPUExecutionProvider, ...
    batch: int
    available: bool = False
    status: str = "unavailable"
    reason: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    cv: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    throughput: float | None = None
    runs: int | None = None
    warmup_runs: int | None = None
    warmup_settled: bool | None = None
    session_create_ms: float | None = None
    first_run_ms: float | None = None
    engine_build_ms: float | None = None
    peak_host_mb: float | None = None
    threads: int | None = None
    precision: str = "fp32"
    io_binding: bool = False
    cuda_graph: bool = False
    provider_options: dict[str, str] = field(default_factory=dict)
    session_config: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, list[int]] = field(default_factory=dict)
    providers_used: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # what identifies the configuration
    notes: list[str] = field(default_factory=list)
    ort_version: str | None = None
    provider_options_effective: dict[str, str] | None = None  # as the session applied them
    environment: str | None = None    # where it ran: None (this process), an environment's
                                      # name, or plugin:PACKAGE
    placement: dict | None = None     # nodes per provider (`placement.summarize`)
    output_check: dict | None = None  # agreement with the CPU fp32 reference (`agreement`)
    p50_ci_ms: list[float] | None = None  # 95% interval of p50 (`uncertainty`)
    rounds: list[dict] | None = None  # one entry per round: p50_ms, runs, cv, steal, when
    stability: dict | None = None     # unstable?, reasons (`uncertainty.stability`)
    raw_times: str | None = None      # every run's time, packed (`uncertainty.pack_times`)
    fingerprint: str | None = None    # the machine's fingerprint id
    measured_at: float | None = None  # seconds since the epoch
    cached: bool = False              # taken from the store (bench --resume), not measured now
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, model: str, model_hash: str, provider: str, short: str, batch: int,
              options: dict) -> "Row":
        """A row before measuring: its configuration, no figures yet."""
        return cls(model=model, model_hash=model_hash, provider=short, provider_name=provider,
                   batch=batch, threads=options["threads"], precision=options["precision"],
                   io_binding=options["io_binding"], cuda_graph=options["cuda_graph"],
                   provider_options=options["provider_options"],
                   session_config=options["session_config"], inputs=options["inputs"],
                   options=options)

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values (what ``--json`` prints and the store keeps)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra"}
        if not self.cached:
            del out["cached"]
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Row":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def csv_record(self) -> dict[str, Any]:
        """The row as one flat CSV record (`CSV_COLUMNS`)."""
        placement = self.placement or {}
        check = self.output_check or {}
        values = {**self.to_dict(), "nodes_on_provider": placement.get("on_provider"),
                  "nodes_total": placement.get("total"),
                  "flops_share_on_provider": placement.get("flops_share"),
                  "outputs_rel_l2": check.get("rel_l2"), "outputs_ok": check.get("ok"),
                  "p50_ci_low_ms": (self.p50_ci_ms or [None, None])[0],
                  "p50_ci_high_ms": (self.p50_ci_ms or [None, None])[1],
                  "rounds_done": len(self.rounds) if self.rounds else None,
                  "unstable": (self.stability or {}).get("unstable"),
                  "unstable_reasons": "; ".join((self.stability or {}).get("reasons", []))}
        return {name: values.get(name) for name in CSV_COLUMNS}

    def update_metrics(self, stats: dict[str, float]) -> None:
        for key in METRICS:
            setattr(self, key, stats[key])


def write_csv(rows: list[Row], stream) -> None:
    """Rows as CSV with a header (`CSV_COLUMNS`); empty cells for missing values."""
    import csv

    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.csv_record().items()})
