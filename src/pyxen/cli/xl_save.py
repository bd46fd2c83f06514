"""xl save / xl restore (tools/xl/xl_saverestore.c): the image is Xen's (xl header,
libxl + libxc migration stream v2); the work is hostd's (toolstack/saverestore.py)."""

from __future__ import annotations

import os
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"]}
_xl: Any = None

cli = click.Group()



def _config_json(path: str) -> dict[str, Any]:
    from pyxen.toolstack.config import ConfigError, load

    try:
        return load(path).to_json()
    except (ConfigError, OSError) as e:
        _xl.fail(f"{path}: {e}")
        raise  # unreachable


@cli.command("save", context_settings=CONTEXT)
@click.option("-c", "checkpoint", is_flag=True,
              help="Leave the domain running after creating the snapshot.")
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused after saving.")
@click.argument("domain")
@click.argument("file")
@click.argument("config", required=False)
def save(checkpoint: bool, paused: bool, domain: str, file: str,
         config: str | None) -> None:
    """Save a domain state to restore later: <Domain> <CheckpointFile> [<ConfigFile>]."""
    args: dict[str, Any] = {"domain": domain, "file": os.path.abspath(file),
                            "checkpoint": checkpoint, "paused": paused}
    if config:
        args["config"] = _config_json(config)
    _xl.call("save", **args)


@cli.command("restore", context_settings=CONTEXT)
@click.option("-p", "paused", is_flag=True, help="Do not unpause domain after restoring it.")
@click.option("-e", "no_wait", is_flag=True,
              help="Do not wait in the background for the death of the domain.")
@click.option("-d", "debug", is_flag=True, help="Enable debug messages.")
@click.option("-V", "--vncviewer", "vnc", is_flag=True,
              help="Connect to the VNC display after the domain is created.")
@click.argument("args", nargs=-1, required=True)
def restore(paused: bool, no_wait: bool, debug: bool, vnc: bool, args: tuple[str, ...]) -> None:
    """Restore a domain from a saved state: [<ConfigFile>] <CheckpointFile>."""
    if len(args) > 2:
        _xl.fail("xl restore: too many arguments: [<ConfigFile>] <CheckpointFile>")
    req: dict[str, Any] = {"file": os.path.abspath(args[-1]), "paused": paused}
    if len(args) == 2:
        req["config"] = _config_json(args[0])
    r = _xl.call("restore", **req)
    if debug:
        click.echo(f"Domain {r['domid']} ({r['name']}) restored in {r['seconds']} s",
                   err=True)
