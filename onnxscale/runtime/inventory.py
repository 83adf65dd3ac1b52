"""Every execution provider onnxscale can reach on this machine, and whether it really runs:
what ``onnxscale providers`` lists.

A provider listed by this onnxruntime build is tried on a one-node model (onnxruntime-gpu lists
CUDA and TensorRT where their libraries are missing; the session then says why).  Plugins are
registered and asked for devices; environments are asked by their own interpreter.  Flavours
that could be added on this platform are listed with the command that adds them.
"""

from __future__ import annotations

from . import environments, plugins
from . import providers as P


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _try_in_process(provider: str) -> str | None:
    """Why a session on ``provider`` does not run here, or None when it does."""
    import onnxruntime as ort

    from .session import capture_native_output, ort_message

    so = ort.SessionOptions()
    so.log_severity_level = 3
    chain = [provider] + ([P.CUDA] if provider == P.TENSORRT else []) + \
        ([P.CPU] if provider != P.CPU else [])
    try:
        with capture_native_output() as log:
            session = ort.InferenceSession(_tiny_model(), so, providers=chain)
    except Exception as exc:
        return ort_message(exc)
    used = session.get_providers()
    return None if provider in used else P.fallback_reason(provider, used, log.text)


def _entry(provider: str, where: str, version: str | None, usable: bool, detail: str) -> dict:
    return {"provider": P.short_name(provider), "name": provider, "where": where,
            "version": version, "usable": usable, "detail": detail}


def inventory() -> list[dict]:
    """One entry per (provider, where it lives), usable ones first within each kind."""
    import onnxruntime as ort

    entries = []
    for provider in ort.get_available_providers():
        reason = _try_in_process(provider)
        entries.append(_entry(provider, "in-process", ort.__version__, reason is None,
                              reason or "runs"))
    for plugin in plugins.discover():
        names = plugin.ep_names or ["?"]
        for ep in names:
            devices = plugin.devices.get(ep, [])
            detail = f"{plugin.package or plugin.library}; devices: {', '.join(devices)}" \
                if devices else (plugin.reason or "offers no device")
            entries.append(_entry(ep, "plugin", plugin.version, bool(devices), detail))
    made = set()
    for env in environments.environments():
        made.add(env.name)
        problem = env.problem()
        if problem is None:
            from .worker import probe

            try:
                facts = probe(env.interpreter)
                missing = [p for p in env.providers if p not in facts["providers"]]
                problem = f"no longer offers {', '.join(missing)}" if missing else None
            except Exception as exc:  # a broken environment is reported, not fatal
                problem = str(exc)[:300]
        for provider in env.providers:
            if provider == P.CPU:
                continue
            detail = problem or f"environment '{env.name}' ({env.package}) at {env.path}"
            entries.append(_entry(provider, "environment", env.ort_version, problem is None,
                                  detail))
    here = environments.this_platform()
    for flavour in environments.FLAVOURS.values():
        if flavour.name in made or here not in flavour.platforms:
            continue
        for provider in flavour.providers:
            entries.append(_entry(provider, "can be added", None, False,
                                  f"{flavour.note}: `onnxscale providers add {flavour.name}` "
                                  f"({flavour.package})"))
    return entries
