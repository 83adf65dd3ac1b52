"""``providers``: what execution providers this machine can reach, and the isolated
environments that bring the ones the main install cannot hold."""

from __future__ import annotations

import click

from .common import json_option, print_json


@click.group("providers", invoke_without_command=True)
@click.option("--ep-library", "ep_libraries", multiple=True, metavar="PATH",
              help="Also register this plugin EP library (repeatable).")
@json_option
@click.pass_context
def providers(ctx: click.Context, ep_libraries, as_json) -> None:
    """List every execution provider onnxscale can reach here.

    In this process's onnxruntime build, as plugin EPs (with their devices), and in isolated
    environments made by `onnxscale providers add NAME`; with versions, and why each one is or
    is not usable.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..runtime import plugins
    from ..runtime.inventory import inventory

    for path in ep_libraries:
        plugins.add_library(path)
    entries = inventory()
    if as_json:
        print_json({"providers": entries})
        return
    from ..render import print_providers

    print_providers(entries)


@providers.command("add")
@click.argument("name")
@click.option("--package", default=None, metavar="REQUIREMENT",
              help="The wheel to install instead of the flavour's own, e.g. "
                   "onnxruntime-openvino==1.24.1 (any name then works).")
@click.option("--force", is_flag=True, help="Remake the environment if it exists.")
@json_option
def add(name, package, force, as_json) -> None:
    """Make an isolated environment for an onnxruntime flavour (openvino, migraphx, directml,
    qnn, cann), so `bench` and `sweep` can time its provider beside the others.

    Needs the package registry once; offline afterwards."""
    from rich.console import Console

    from ..runtime import environments

    key, requirement = environments.resolve_package(name, package)
    existing = environments.get(key)
    if existing is not None and not force and existing.problem() is None:
        click.echo(f"environment '{key}' is already made ({existing.package}, onnxruntime "
                   f"{existing.ort_version}) at {existing.path}; --force remakes it")
        return
    console = Console(stderr=True)
    with console.status(f"making environment '{key}' with {requirement} ..."):
        env = environments.create(name, package, force=force)
    if as_json:
        print_json({"environment": env.to_dict()})
        return
    from ..runtime.providers import short_name

    click.echo(f"environment '{env.name}': {env.package} (onnxruntime {env.ort_version}, "
               f"Python {env.python}) at {env.path}")
    click.echo(f"providers: {', '.join(short_name(p) for p in env.providers)}")


@providers.command("remove")
@click.argument("name")
def remove(name) -> None:
    """Delete an isolated environment."""
    from ..runtime import environments

    path = environments.remove(name)
    click.echo(f"removed {path}")
