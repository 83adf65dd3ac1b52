"""Where a provider can run: in this process's onnxruntime, as a plugin registered into it, or
in an isolated environment (a worker process); or nowhere, with every reason and the command
that would fix it.

The order is the cheapest first: a provider in this onnxruntime build (even one whose libraries
may fail to load: the session then says why), then a plugin that offers a device here, then an
environment made by ``onnxscale providers add``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import environments, plugins
from . import providers as P

IN_PROCESS, PLUGIN, ENVIRONMENT = "in-process", "plugin", "environment"


@dataclass
class Route:
    """How a provider is reached; ``kind`` None means it cannot be, for ``reason``."""

    provider: str
    kind: str | None
    environment: environments.Environment | None = None
    plugin: plugins.Plugin | None = None
    reason: str | None = None

    @property
    def label(self) -> str | None:
        """What a row records as where it ran (None: in this process's build)."""
        if self.kind == ENVIRONMENT and self.environment is not None:
            return self.environment.name
        if self.kind == PLUGIN and self.plugin is not None:
            return f"plugin:{self.plugin.name}"
        return None


def route(provider: str) -> Route:
    """The way to run ``provider`` here (see the module doc for the order)."""
    missing = P.availability(provider)
    if missing is None:
        return Route(provider, IN_PROCESS)
    found = plugins.for_provider(provider)
    usable = next((p for p in found if p.offers(provider)), None)
    if usable is not None:
        return Route(provider, PLUGIN, plugin=usable)
    env = environments.for_provider(provider)
    if env is not None:
        return Route(provider, ENVIRONMENT, environment=env)
    reasons = [missing.split("; ")[0]]
    reasons += [f"plugin {p.name}: {p.reason}" for p in found if p.reason]
    flavour = environments.flavour_for(provider)
    if flavour is not None:
        reasons.append(f"run `onnxscale providers add {flavour.name}` to time it in an "
                       f"environment of its own")
    else:
        hint = P.install_hint(provider)
        if hint:
            reasons.append(hint)
    return Route(provider, None, reason="; ".join(reasons))
