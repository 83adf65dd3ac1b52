"""The results database: every benchmark measurement, in SQLite.

One row per (model content hash, provider, options, batch, machine fingerprint); measuring the
same configuration again replaces the row, so the table never holds duplicates.  Each row is
committed on its own, in WAL mode with a busy timeout, so an interrupted ``bench`` keeps every
configuration it finished and several processes can write at once.

The database lives at ``$ONNXSCALE_DB`` if set, else in the user's data folder
(``$XDG_DATA_HOME/onnxscale/results.db``, ``~/.local/share/onnxscale/results.db``; the
platform's equivalent on macOS and Windows).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from .runtime.row import Row
from .errors import OnnxscaleError

SCHEMA_VERSION = 3  # 2: sweep_cells, 3: profiles (older databases are upgraded in place)
BUSY_TIMEOUT_S = 60.0

# Columns copied out of the row dict for querying; the full row is kept as JSON in `data`.
_METRICS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "cv", "min_ms", "throughput",
            "runs", "session_create_ms", "first_run_ms", "peak_host_mb")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS fingerprints (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    model_hash TEXT NOT NULL,
    provider TEXT NOT NULL,
    options TEXT NOT NULL,
    batch INTEGER NOT NULL,
    fingerprint TEXT NOT NULL REFERENCES fingerprints(id),
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    available INTEGER NOT NULL,
    reason TEXT,
    {", ".join(f"{m} REAL" for m in _METRICS)},
    measured_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (model_hash, provider, options, batch, fingerprint)
);
CREATE INDEX IF NOT EXISTS results_model ON results (model);
CREATE INDEX IF NOT EXISTS results_fingerprint ON results (fingerprint);
CREATE TABLE IF NOT EXISTS sweep_cells (
    base_hash TEXT NOT NULL,
    strategy TEXT NOT NULL,
    factor REAL NOT NULL,
    provider TEXT NOT NULL,
    batch INTEGER NOT NULL,
    options TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    base TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    flops INTEGER,
    params INTEGER,
    acts INTEGER,
    p50_ms REAL,
    measured_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (base_hash, strategy, factor, provider, batch, options, fingerprint)
);
CREATE TABLE IF NOT EXISTS profiles (
    model_hash TEXT NOT NULL,
    provider TEXT NOT NULL,
    options TEXT NOT NULL,
    batch INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    p50_ms REAL,
    measured_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (model_hash, provider, options, batch, fingerprint)
);
"""
# a cell's key, in the column order of the primary key
CELL_KEY = ("base_hash", "strategy", "factor", "provider", "batch", "options", "fingerprint")


def default_db_path() -> Path:
    """``$ONNXSCALE_DB``, else ``<user data dir>/onnxscale/results.db``."""
    env = os.environ.get("ONNXSCALE_DB")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "onnxscale" / "results.db"


def options_key(options: dict) -> str:
    """Canonical JSON of a configuration's options (the `options` part of the row key)."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)


class ResultStore:
    """A results database; use as a context manager or call `close()`."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        if self.path.is_dir():
            raise OnnxscaleError(f"{self.path}: is a directory, expected a database file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OnnxscaleError(f"{self.path}: cannot create its folder ({exc.strerror})") from exc
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves
            self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._enable_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise OnnxscaleError(f"{self.path}: not a usable results database ({exc})") from exc

    # -- setup ---------------------------------------------------------------------------------

    def _enable_wal(self) -> None:
        """Switch to WAL, waiting for other writers: SQLite answers 'database is locked' at
        once, without its busy handler, when two processes open a new database together."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _init_schema(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OnnxscaleError(f"{self.path}: written by a newer onnxscale (schema {version}; "
                                 f"this one reads {SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return
        tables = {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and tables:
            raise OnnxscaleError(f"{self.path}: an SQLite database that onnxscale did not "
                                 f"create (tables: {', '.join(sorted(tables)[:5])}); give "
                                 f"another --db")
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _write(self):
        return _Transaction(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def save_fingerprint(self, fingerprint: dict) -> str:
        fid = fingerprint["id"]
        now = time.time()
        with self._write():
            self._conn.execute(
                "INSERT INTO fingerprints (id, data, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
                "last_seen = excluded.last_seen",
                (fid, json.dumps(fingerprint, sort_keys=True), now, now))
        return fid

    def save(self, measured: Row) -> None:
        """Insert or replace one measurement (committed before returning)."""
        row = measured.to_dict()
        key = options_key(row["options"])
        provider = row.get("provider_name") or row["provider"]  # full onnxruntime name
        values = [row["model_hash"], provider, key, int(row["batch"]), row["fingerprint"],
                  row["model"], row["status"], 1 if row["available"] else 0, row.get("reason")]
        values += [row.get(m) for m in _METRICS]
        values += [row.get("measured_at") or time.time(), json.dumps(row, default=str)]
        columns = ("model_hash, provider, options, batch, fingerprint, model, status, available, "
                   "reason, " + ", ".join(_METRICS) + ", measured_at, data")
        updates = ", ".join(f"{c.strip()} = excluded.{c.strip()}"
                            for c in columns.split(",")[5:])
        with self._write():
            self._conn.execute(
                f"INSERT INTO results ({columns}) VALUES ({', '.join('?' * len(values))}) "
                f"ON CONFLICT (model_hash, provider, options, batch, fingerprint) DO UPDATE SET "
                f"{updates}", values)

    def save_cell(self, cell: dict) -> None:
        """Insert or replace one sweep cell (committed before returning: a sweep killed at any
        moment keeps every finished cell, and a rerun never duplicates one)."""
        values = [cell[k] for k in CELL_KEY] + [cell["base"], cell["status"], cell.get("reason"),
                                                cell.get("flops"), cell.get("params"),
                                                cell.get("acts"), cell.get("p50_ms"),
                                                cell.get("measured_at") or time.time(),
                                                json.dumps(cell, default=str)]
        columns = CELL_KEY + ("base", "status", "reason", "flops", "params", "acts", "p50_ms",
                              "measured_at", "data")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[len(CELL_KEY):])
        with self._write():
            self._conn.execute(
                f"INSERT INTO sweep_cells ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(values))}) ON CONFLICT ({', '.join(CELL_KEY)}) "
                f"DO UPDATE SET {updates}", values)

    def cell_status(self, key: dict) -> str | None:
        """The stored status of a sweep cell ('ok', 'unavailable', 'failed'), or None."""
        found = self._conn.execute(
            f"SELECT status FROM sweep_cells WHERE {' AND '.join(f'{k} = ?' for k in CELL_KEY)}",
            [key[k] for k in CELL_KEY]).fetchone()
        return found["status"] if found else None

    def cell(self, key: dict) -> dict | None:
        """One stored sweep cell, or None."""
        found = self._conn.execute(
            f"SELECT data FROM sweep_cells WHERE {' AND '.join(f'{k} = ?' for k in CELL_KEY)}",
            [key[k] for k in CELL_KEY]).fetchone()
        return json.loads(found["data"]) if found else None

    def cells(self, *, base: str | None = None, fingerprint: str | None = None) -> list[dict]:
        """Stored sweep cells, oldest first (``base``: substring of the base model's name or
        prefix of its hash; ``fingerprint``: prefix of the machine id)."""
        sql, args = "SELECT data FROM sweep_cells WHERE 1 = 1", []
        if base:
            sql += " AND (instr(base, ?) > 0 OR base_hash LIKE ?)"
            args += [base, base + "%"]
        if fingerprint:
            sql += " AND fingerprint LIKE ?"
            args.append(fingerprint + "%")
        sql += " ORDER BY measured_at, rowid"
        return [json.loads(r["data"]) for r in self._conn.execute(sql, args)]

    def save_profile(self, key: dict, data: dict) -> None:
        """Insert or replace one model's per-layer profile (``key``: model_hash, provider,
        options (a dict), batch, fingerprint; ``data``: the profile with model, p50_ms)."""
        values = [key["model_hash"], key["provider"], options_key(key["options"]),
                  int(key["batch"]), key["fingerprint"], data["model"], data.get("p50_ms"),
                  time.time(), json.dumps(data | {"options": key["options"]}, default=str)]
        with self._write():
            self._conn.execute(
                "INSERT INTO profiles (model_hash, provider, options, batch, fingerprint, "
                "model, p50_ms, measured_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (model_hash, provider, options, batch, fingerprint) DO UPDATE SET "
                "model = excluded.model, p50_ms = excluded.p50_ms, "
                "measured_at = excluded.measured_at, data = excluded.data", values)

    def profiles(self, *, provider: str, options: dict, batch: int, fingerprint: str,
                 model_hash: str | None = None) -> list[dict]:
        """Stored profiles of one configuration (and machine), oldest first."""
        sql = ("SELECT data FROM profiles WHERE provider = ? AND options = ? AND batch = ? "
               "AND fingerprint = ?")
        args = [provider, options_key(options), int(batch), fingerprint]
        if model_hash:
            sql += " AND model_hash = ?"
            args.append(model_hash)
        sql += " ORDER BY measured_at, rowid"
        return [json.loads(r["data"]) for r in self._conn.execute(sql, args)]

    # -- reading -------------------------------------------------------------------------------

    def get(self, model_hash: str, provider: str, options: dict, batch: int,
            fingerprint: str) -> Row | None:
        """The stored row for one configuration (``provider`` is the full onnxruntime name)."""
        cur = self._conn.execute(
            "SELECT data FROM results WHERE model_hash = ? AND provider = ? AND options = ? "
            "AND batch = ? AND fingerprint = ?",
            (model_hash, provider, options_key(options), int(batch), fingerprint))
        found = cur.fetchone()
        return Row.from_dict(json.loads(found["data"])) if found else None

    def rows(self, *, model: str | None = None, providers: list[str] | None = None,
             fingerprint: str | None = None, available_only: bool = False) -> list[Row]:
        """Stored rows, oldest first; ``model`` matches a substring of the model name or a
        prefix of its content hash; ``providers`` are full onnxruntime names."""
        sql = "SELECT data FROM results WHERE 1 = 1"
        args: list = []
        if model:
            sql += " AND (instr(model, ?) > 0 OR model_hash LIKE ?)"
            args += [model, model + "%"]
        if providers:
            sql += f" AND provider IN ({', '.join('?' * len(providers))})"
            args += list(providers)
        if fingerprint:
            sql += " AND fingerprint LIKE ?"
            args.append(fingerprint + "%")
        if available_only:
            sql += " AND available = 1"
        sql += " ORDER BY measured_at, rowid"
        return [Row.from_dict(json.loads(r["data"])) for r in self._conn.execute(sql, args)]

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def fingerprints(self) -> dict[str, dict]:
        cur = self._conn.execute("SELECT id, data FROM fingerprints ORDER BY first_seen")
        return {r["id"]: json.loads(r["data"]) for r in cur}


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error), so writers queue on the lock."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self):
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        return False


# -- comparisons (pure functions over rows) --------------------------------------------------------

def variant_label(row: Row) -> str:
    """Provider name plus what sets this row apart from the provider's defaults
    (``cuda+graph``, ``cpu+iob``, ``tensorrt[trt_fp16_enable=1]``)."""
    from .runtime.providers import DEVICE_MEMORY

    label = row.provider or "?"
    if row.cuda_graph:
        label += "+graph"
    default_iob = row.provider_name in DEVICE_MEMORY
    if row.io_binding is not None and bool(row.io_binding) != default_iob and \
            not row.cuda_graph:
        label += "+iob" if row.io_binding else "-iob"
    options = row.provider_options or {}
    if options:
        label += "[" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + "]"
    return label


def _setting_key(row: Row) -> tuple:
    return (row.threads, row.precision,
            options_key(row.inputs or {}), options_key(row.session_config or {}))


def compare_providers(rows: list[Row], baseline: str = "cpu") -> list[dict]:
    """Providers side by side: one entry per (model, batch, machine, settings) with each
    provider variant's p50 and its speedup over ``baseline`` (a short provider name; the first
    measured variant of the group when the baseline is missing)."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        key = (row.model_hash, row.batch, row.fingerprint, _setting_key(row))
        entry = groups.setdefault(key, {
            "model": row.model, "model_hash": row.model_hash, "batch": row.batch,
            "fingerprint": row.fingerprint, "threads": row.threads,
            "precision": row.precision, "p50_ms": {}, "speedup": {}, "unavailable": {},
            "baseline": None,
        })
        label = variant_label(row)
        if row.available and row.p50_ms:
            entry["p50_ms"][label] = row.p50_ms
            entry["unavailable"].pop(label, None)
        elif label not in entry["p50_ms"]:
            entry["unavailable"][label] = row.reason or row.status
    out = []
    for entry in groups.values():
        times = entry["p50_ms"]
        base = next((lbl for lbl in times if lbl == baseline), None) or \
            next((lbl for lbl in times if lbl.split("+")[0].split("[")[0] == baseline), None) or \
            next(iter(times), None)
        entry["baseline"] = base
        if base is not None:
            entry["speedup"] = {lbl: times[base] / t for lbl, t in times.items() if t}
        out.append(entry)
    return out


def compare_machines(rows: list[Row]) -> list[dict]:
    """One model across machines: per (model, batch, provider variant, settings), p50 on each
    fingerprint and the ratio to the first machine that measured it.  Only groups measured on
    two or more machines are returned."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        if not (row.available and row.p50_ms):
            continue
        label = variant_label(row)
        key = (row.model_hash, row.batch, label, _setting_key(row))
        entry = groups.setdefault(key, {
            "model": row.model, "model_hash": row.model_hash, "batch": row.batch,
            "provider": label, "threads": row.threads, "precision": row.precision,
            "p50_ms": {}, "ratio": {},
        })
        entry["p50_ms"][row.fingerprint] = row.p50_ms
    out = []
    for entry in groups.values():
        if len(entry["p50_ms"]) < 2:
            continue
        first = next(iter(entry["p50_ms"].values()))
        entry["ratio"] = {fid: t / first for fid, t in entry["p50_ms"].items()}
        out.append(entry)
    return out
