"""Sweeps on a Ray cluster (``onnxscale sweep --ray``): every machine in it, side by side.

Ray schedules; onnxscale only decides what runs where and keeps the books:

- **Units.**  A unit is one (base model, strategy, factor, machine kind, provider class): the
  node that runs it plans and writes the scaled model itself, then times every pending
  (provider, batch) of that class.  A scaled model is made once per node and class, never
  once per provider, and nodes need no shared filesystem.  The base model is put in Ray's
  object store once and pulled by each node once.
- **Placement.**  A CPU unit asks for every CPU of its node, so no scaling work and no other
  timing shares the CPUs it times on; a CUDA/TensorRT unit asks for one whole GPU (and one
  CPU), so two timings never share a device.  Units are pinned to a node of their kind
  (round robin over those nodes), so a row's machine fingerprint is the machine that
  measured it.
- **Machine kinds.**  Nodes are grouped by their machine fingerprint (`bench.fingerprint`).
  By default each cell is measured once, every cell of a provider class on one kind (so a
  curve never mixes hardware; `RaySweep._any_kind` says which); ``each_machine`` measures
  every cell on every kind, ``accelerator_types`` (Ray's names: ``H100``, ``A10G``) on every
  kind with one of those GPUs.
- **One writer.**  Only this driver writes the SQLite store, one committed row per finished
  cell, as the local sweep does, so resume (cells done on a kind are skipped there), SIGKILL
  and rerun behave the same.  A unit whose node dies is run again on another node of its
  kind, or stored as failed with the reason when none is left.

Ray is imported only here, and only when ``--ray`` is given (it takes seconds to import).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field

from .runtime import model_hash
from .runtime.providers import short_name
from .runtime.row import Row
from .errors import OnnxscaleError, UsageError
from .model import LoadedModel, from_pieces, load_model, to_pieces
from .sweeps import (Strategy, Sweep, _figures, failed_cells, job_facts, make_scaled,
                    sweep_jobs, time_cells)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
NODE_RETRIES = 3   # a unit whose node dies is tried on this many other nodes of its kind
NO_RAY = "--ray needs Ray, which is not installed: pip install 'onnxscale[ray]'"
# A local cluster keeps no idle workers: each costs about 1% of a core, taken from the CPU
# timings (README: the same for `ray start`).
QUIET_LOCAL_CLUSTER = {"enable_worker_prestart": False, "prestart_worker_first_driver": False,
                       "num_workers_soft_limit": 0}
# Ray starts its workers at nice 15 (RAY_worker_niceness) so that its daemons win the CPU
# under load; a timing at nice 15 loses the CPU to every other process on its node (on this
# 2-core VM the median CPU cell came out 11-13% slower than timed locally; at nice 0, 1.00).
# Units and the probe run in workers started at nice 0, the way Ray's own job supervisor asks
# for it: an environment variable in the runtime env, so no cluster setting and no privilege
# is needed.
TIMING_WORKER = {"runtime_env": {"env_vars": {"RAY_worker_niceness": "0"}}}


@dataclass
class Node:
    id: str
    cpus: int
    gpus: int
    accelerator: str | None
    fingerprint: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.fingerprint.get("id", "?")


@dataclass
class Unit:
    """What one Ray task does: one scaled model on one node, timed on its pending cells."""

    base: str
    ref: object                   # the base model's pieces (`to_pieces`) in Ray's object store
    strategy: Strategy
    factor: float
    facts: dict
    pending: list[dict]
    kind: str
    gpu: bool
    tried: list[str] = field(default_factory=list)   # node ids that died under it


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(NO_RAY) from None
    return ray


def connect(address: str):
    """Join (``auto``, ``HOST:PORT``), connect as a client (``ray://HOST:PORT``) or start a
    local cluster (``local``); a one-line error says what to do when that fails."""
    ray = import_ray()
    if address not in ("local", "auto"):
        _reachable(address)
    if address.startswith("ray://"):
        _client_installed(address)
    local = address == "local"
    if local:  # a cluster this command starts and stops: Ray's token-auth notice is noise
        logging.getLogger("ray._private.authentication.authentication_token_setup") \
            .setLevel(logging.ERROR)
    try:
        _init(ray, address, QUIET_LOCAL_CLUSTER if local else None)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ("start one with 'ray start --head' on this machine, or give its address"
                if address == "auto" else "check the address and that 'ray start' runs there")
        raise OnnxscaleError(f"--ray {address}: cannot connect to a Ray cluster ({first}); "
                             f"{hint}") from None
    return ray


def _init(ray, address: str, system_config: dict | None, client_tries: int = 3) -> None:
    """``ray.init``; a client (``ray://``) tries again: the head's client server starts a
    server per client, and on a busy head that start fails now and then ("Initialization
    failure from server") while the next try works."""
    for attempt in range(client_tries if address.startswith("ray://") else 1):
        try:
            # "local" is Ray's own word for a new cluster; None would join one started here
            ray.init(address=address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False, _system_config=system_config)
            return
        except ConnectionError:
            if attempt + 1 >= client_tries or not address.startswith("ray://"):
                raise
            ray.shutdown()  # what the failed try left, so the next one starts clean
            time.sleep(2.0)


def _client_installed(address: str) -> None:
    """Ray's client (``ray://``) needs grpcio, which a minimal ``pip install ray`` lacks."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray {address}: connecting as a client needs Ray's client: pip "
                         f"install 'ray[client]' (or 'onnxscale[ray]')") from None


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at (Ray itself retries for a minute)."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise OnnxscaleError(f"--ray {address}: nothing answers at {host}:{port} ({exc}); "
                             f"start the head there with 'ray start --head' or fix the "
                             f"address") from None


def discover(ray) -> list[Node]:
    """The cluster's alive nodes, with their resources and machine fingerprints."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        resources = info.get("Resources", {})
        accelerator = next((k.split(":", 1)[1] for k in resources
                            if k.startswith("accelerator_type:")), None)
        nodes.append(Node(info["NodeID"], int(resources.get("CPU", 0)),
                          int(resources.get("GPU", 0)), accelerator))
    probe = ray.remote(num_cpus=0, max_retries=0)(_fingerprint)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.id, soft=False),
                          **TIMING_WORKER).remote() for n in nodes]  # the units' worker kind
    answered = []
    for node, ref in zip(nodes, refs):
        try:
            node.fingerprint = ray.get(ref)
        except ray.exceptions.RayError:  # died since ray.nodes() listed it: not a node to use
            continue
        answered.append(node)
    return answered


def _fingerprint() -> dict:
    from .runtime import fingerprint

    return fingerprint.collect()


class RaySweep(Sweep):
    """`Sweep` with units run as Ray tasks; this process stays the only writer."""

    def __init__(self, *args, address: str = "local", each_machine: bool = False,
                 accelerator_types: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ray = connect(address)
        self.nodes = discover(self.ray)
        self.kinds = self._target_kinds(each_machine, accelerator_types or [])
        self.each = each_machine or bool(accelerator_types)
        for node in self.nodes:
            self.store.save_fingerprint(node.fingerprint)
        self._turns: dict[tuple, itertools.count] = {}
        self._niced: dict[str, int] = {}   # nodes whose units ran niced: their niceness

    def _target_kinds(self, each_machine: bool, types: list[str]) -> list[str]:
        kinds = list(dict.fromkeys(n.kind for n in self.nodes))
        if not types:
            return kinds
        present = sorted({n.accelerator for n in self.nodes if n.accelerator})
        missing = [t for t in types if t not in present]
        if missing:
            raise OnnxscaleError(
                f"--accelerator-type {','.join(missing)}: no node of the cluster has it "
                f"(present: {', '.join(present) or 'no accelerator types'}); start workers "
                f"with such GPUs or drop the option")
        return list(dict.fromkeys(n.kind for n in self.nodes if n.accelerator in types))

    # ---- planning the units -------------------------------------------------------------------
    def run(self, models: list[str], strategies: list[Strategy],
            factors: list[float]) -> object:
        jobs = sweep_jobs(strategies, factors)
        copies = len(self.kinds) if self.each else 1
        self.total = len(models) * len(jobs) * len(self.providers) * len(self.batches) * copies
        units = []
        for spec in models:
            loaded = load_model(spec, seed=self.settings.seed)
            ref = self.ray.put(to_pieces(loaded.proto))  # pieces: any size, even > 2 GiB
            base_hash = model_hash(loaded)
            for strategy, factor in jobs:
                facts = job_facts(loaded.source, base_hash, strategy, factor)
                units += self._units(loaded.source, ref, strategy, factor, facts)
        self._execute(units)
        if self._niced:
            nodes = ", ".join(f"{node} at nice {nice}" for node, nice in self._niced.items())
            self.result.notes.append(
                f"timed niced on node(s) {nodes}: any other process there took the CPU "
                f"first; start Ray on those nodes at nice 0 (workers inherit the raylet's)")
        return self.result

    def _units(self, source, ref, strategy, factor, facts) -> list[Unit]:
        units = []
        for kind in self.kinds if self.each else [None]:
            for gpu in (False, True):
                providers = [p for p in self.providers if (p in GPU_PROVIDERS) == gpu]
                pending = self._pending_on(facts["base_hash"], strategy, factor, providers, kind)
                if not pending:
                    continue
                where = kind or self._any_kind(gpu)
                units.append(Unit(source, ref, strategy, factor, facts, pending, where, gpu))
        return units

    def _pending_on(self, base_hash, strategy, factor, providers, kind) -> list[dict]:
        """Cells still to do on machine ``kind`` (None: on any kind in the cluster)."""
        kinds = [kind] if kind else list(dict.fromkeys(n.kind for n in self.nodes))
        pending = []
        for key in self._cell_keys(base_hash, strategy, factor, providers):
            settled = [k for k in kinds
                       if self._settled(self.store.cell_status(key | {"fingerprint": k}))]
            if settled:
                self.result.skipped += 1
                self.handled += 1
                self.result.add_earlier(self.store.cell(key | {"fingerprint": settled[0]}))
                continue
            pending.append(key)
        return pending

    def _any_kind(self, gpu: bool) -> str:
        """The one machine kind that measures a provider class when not every kind must, so
        each curve comes from one kind of hardware: for GPU cells the kind with the most
        GPUs; for CPU cells the kind with the most CPUs among kinds without GPUs (they stay
        free for GPU cells), else among all.  Units spread over that kind's nodes."""
        totals: dict[str, list[int]] = {}
        for node in self.nodes:
            total = totals.setdefault(node.kind, [0, 0])
            total[0] += node.gpus
            total[1] += node.cpus
        if gpu:
            ranked = sorted(totals, key=lambda k: -totals[k][0])
        else:
            ranked = sorted(totals, key=lambda k: (totals[k][0] > 0, -totals[k][1]))
        return ranked[0]

    # ---- running them -------------------------------------------------------------------------
    def _execute(self, units: list[Unit]) -> None:
        ray = self.ray
        task = ray.remote(max_retries=0)(run_unit)
        running: dict = {}
        queue = list(units)
        while queue or running:
            while queue:
                unit = queue.pop(0)
                node = self._node_for(unit)
                if node is None:
                    cells = failed_cells(_keyed(unit.pending, unit.kind), unit.facts,
                                         self._no_node_reason(unit))
                    if not unit.tried:  # no GPU anywhere: like a provider that cannot run
                        cells = [c | {"status": "unavailable"} for c in cells]
                    self._store(cells)
                    continue
                ref = task.options(**self._placement(node, unit)).remote(
                    [unit.ref], unit.base, unit.strategy, unit.factor, unit.facts, unit.pending,
                    self.settings, self.tolerance, node.id)
                running[ref] = (unit, node)
                self._report(f"{unit.base} {unit.strategy.name} x{unit.factor:g} on "
                             f"{node.id[:8]} ({'GPU' if unit.gpu else 'CPU'})")
            done, _ = ray.wait(list(running), num_returns=1)
            unit, node = running.pop(done[0])
            try:
                cells = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # our code raised: a bug, said once
                cells = failed_cells(_keyed(unit.pending, node.kind), unit.facts,
                                     f"internal error on node {node.id[:8]}: "
                                     f"{str(exc).strip().splitlines()[-1]}")
            except ray.exceptions.RayError:  # the node or its worker died: another node
                unit.tried.append(node.id)
                self.nodes = discover(ray)
                queue.append(unit)
                continue
            self._store(cells)

    def _node_for(self, unit: Unit) -> Node | None:
        if len(unit.tried) > NODE_RETRIES:
            return None
        nodes = [n for n in self.nodes if n.kind == unit.kind and n.id not in unit.tried
                 and (n.gpus or not unit.gpu)]
        if not nodes:
            return None
        turn = self._turns.setdefault((unit.kind, unit.gpu), itertools.count())
        return nodes[next(turn) % len(nodes)]  # round robin per kind and class

    def _no_node_reason(self, unit: Unit) -> str:
        if unit.tried:
            return (f"the node(s) {', '.join(n[:8] for n in unit.tried)} died while measuring "
                    f"and no other node of this machine kind is left")
        return "no node of this machine kind has a GPU" if unit.gpu else \
            "no node of this machine kind is alive"

    @staticmethod
    def _placement(node: Node, unit: Unit) -> dict:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources = {"num_gpus": 1, "num_cpus": 1} if unit.gpu else \
            {"num_gpus": 0, "num_cpus": max(1, node.cpus)}
        return resources | TIMING_WORKER | {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node.id, soft=False)}

    def _store(self, cells: list[dict]) -> None:
        for cell in cells:
            if cell.get("bench"):  # the timing row too, as a local sweep stores it (results)
                self.store.save(Row.from_dict(cell["bench"]))
            self.store.save_cell(cell)
            if cell.get("nice"):
                self._niced[cell["node"][:8]] = cell["nice"]
            if cell["status"] == "failed":
                self.result.failed += 1
            else:
                self.result.done += 1
            self.result.cells.append(cell)
            self.handled += 1
            self._report(f"{cell['base']} {cell['strategy']} x{cell['factor']:g} "
                         f"{short_name(cell['provider'])} batch {cell['batch']}: "
                         f"{cell['status']}")


def _keyed(pending: list[dict], kind: str) -> list[dict]:
    return [key | {"fingerprint": kind} for key in pending]


_BASES: dict[str, tuple] = {}   # per worker process: the base loaded and analyzed once


def run_unit(base: list, source: str, strategy: Strategy, factor: float, facts: dict,
             pending: list[dict], settings, tolerance: float, node_id: str) -> list[dict]:
    """On a node: plan and write the scaled model, time it on every pending cell, return
    the finished cells (keyed by this machine's fingerprint).  Runs in a Ray worker.

    ``base`` holds the reference to the base model's pieces, in a list so that Ray does not
    fetch and deserialize it for every unit: a worker does that once per base model."""
    from .runtime import fingerprint

    machine = fingerprint.collect()["id"]
    keys = [key | {"fingerprint": machine} for key in pending]
    placed = {"node": node_id, "nice": os.nice(0)}  # 0 (TIMING_WORKER) unless Ray runs niced
    loaded, planner = _base(facts["base_hash"], base[0], source, settings)
    if factor == 1:
        made, path = facts | _figures(planner.base), None
    else:
        try:
            made, path = make_scaled(loaded, planner, strategy, factor, facts, settings,
                                     tolerance)  # in a temporary folder, removed below
        except OnnxscaleError as exc:
            return failed_cells(keys, facts | placed, str(exc))
    try:
        return list(time_cells(loaded, path, keys, made | placed, settings))
    finally:
        if path is not None:
            shutil.rmtree(path.parent, ignore_errors=True)


def _base(base_hash: str, ref, source: str, settings) -> tuple[LoadedModel, object]:
    """The base model and its `Planner`, fetched and built once per worker and base."""
    if base_hash not in _BASES:
        import ray

        from .scaling.pipeline import Planner

        _BASES.clear()  # one base at a time: each holds a model and a hollow copy
        loaded = LoadedModel(from_pieces(*ray.get(ref)), source, None)
        _BASES[base_hash] = (loaded, Planner(loaded.proto, settings.input_shapes))
    return _BASES[base_hash]
