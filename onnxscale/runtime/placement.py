"""Where every node of a session ran: which execution provider ONNX Runtime assigned each node
of the optimised graph to.

``session.get_providers()`` lists the providers a session was given, not where its nodes run:
a CUDA session can run a Resize or a NonMaxSuppression on CPU and still list CUDA first.  ONNX
Runtime ≥ 1.24 records the assignment when the session config entry
``session.record_ep_graph_assignment_info`` is ``1``; `summarize` reads it into a row's
``placement``: node counts per provider, the nodes that did not run on the requested provider
(name and op), and whether the row is partial.  The flops share is added by the caller, who has
the model's per-layer flops (`flops_share`).
"""

from __future__ import annotations

from collections import Counter

from . import providers as P

CONFIG_KEY = "session.record_ep_graph_assignment_info"
MAX_LISTED = 200  # nodes elsewhere kept by name; counts stay exact beyond it


def summarize(session, provider: str) -> dict | None:
    """The placement of ``session``'s nodes, or None where this onnxruntime cannot tell."""
    getter = getattr(session, "get_provider_graph_assignment_info", None)
    if getter is None:
        return None
    try:
        subgraphs = getter()
    except Exception:
        return None
    counts: Counter = Counter()
    elsewhere: list[dict] = []
    for subgraph in subgraphs:
        ep = subgraph.ep_name
        nodes = subgraph.get_nodes()
        counts[P.short_name(ep)] += len(nodes)
        if ep != provider:
            for node in nodes:
                if len(elsewhere) < MAX_LISTED:
                    elsewhere.append({"name": node.name, "op": node.op_type,
                                      "provider": P.short_name(ep)})
    if not counts:
        return None
    total = sum(counts.values())
    mine = counts.get(P.short_name(provider), 0)
    return {"nodes": dict(counts), "total": total, "on_provider": mine,
            "partial": mine < total, "elsewhere": elsewhere}


def flops_share(placement: dict, layer_flops: dict[str, float]) -> float | None:
    """The share of the model's flops in nodes on the requested provider, matching the
    optimised graph's node names to the model's layers (a fused node keeps the name of the
    layer it grew from).  None when no flops are known."""
    total = sum(layer_flops.values())
    if total <= 0:
        return None
    away = sum(layer_flops.get(node["name"], 0.0) for node in placement.get("elsewhere", []))
    return max(0.0, 1.0 - away / total)


def describe(placement: dict | None, provider: str) -> str:
    """One line for tables: ``212/230 nodes, 97% of flops; 18 on cpu: Resize, ...``."""
    if not placement:
        return "?"
    mine, total = placement["on_provider"], placement["total"]
    share = placement.get("flops_share")
    text = "all" if mine == total else f"{mine}/{total}"
    text += " nodes"
    if share is not None and mine != total:
        text += f", {share * 100:.0f}% of flops"
    if mine != total:
        ops = Counter(node["op"] for node in placement.get("elsewhere", []))
        where = sorted({node["provider"] for node in placement.get("elsewhere", [])})
        listed = ", ".join(op for op, _ in ops.most_common(3))
        text += f"; {total - mine} on {'/'.join(where)}: {listed}"
    return text
