"""xl's entry point, as tools/xl/xl.c's main(): global options (getopt "+vftTN"), the
command table with unambiguous-prefix lookup, `xl help [CMD]`, `xl CMD -h`, xl's wording and
exit statuses for unknown commands, options and missing arguments, then the command.

A lean path first: the commands people run in loops (FAST below: `list`, `info`,
`console`, `domid`, `destroy`, `pause`, `unpause`, `shutdown`, `reboot` with no options, and `create` with its
options, cli/xl_create.py) run here without importing click or rich, and print what the
click commands print (tests/toolstack/test_xl_surface.py and test_xl_create_lean.py
compare the two). Everything else goes to the click group in cli/xl.py, to which ``_adopt`` adds
the other cli/xl_*.py modules' commands.
"""

from __future__ import annotations

import os
import sys

from pyxen.cli.xlcore import G, XlError, call, connect, fail, one_line
from pyxen.toolstack.client import HostdError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, click and the table stay out of the fast path's start-up
    from collections.abc import Callable
    from typing import Any

    from pyxen.cli.xl_cmdtable import CmdSpec

GLOBAL_OPTS = "vftTN"

# Commands whose -N (dry run) pyxen implements; a click command can also say so with
# an ``xl_dryrun = True`` attribute.
DRYRUN = {"create", "network-attach", "block-attach"}


# ----------------------------------------------------------------------------- fast path

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def fast_list(args: list[str]) -> int:
    doms = call("list", domains=args)["domains"]
    lines = [LIST_HEADER]
    for d in doms:
        lines.append(f"{d['name']:<40} {d['domid']:>5} {d['memory']:>5} {d['vcpus']:>5}     "
                     f"{d['state']}  {d['cpu_time']:>8.1f}")
    _out("\n".join(lines) + "\n")
    return 0


def fast_info(args: list[str]) -> int:
    if len(args) > 1:
        return -1
    name = args[0] if args else None
    out = []
    for key, value in call("info")["info"]:
        if name is None:
            out.append(f"{key:<23}:{value}" if key == "virt_caps" else f"{key:<23}: {value}")
        elif key.startswith(name):
            out.append(value.lstrip())
    _out("".join(line + "\n" for line in out))
    return 0


def fast_console(args: list[str]) -> int:
    if len(args) != 1:
        return -1
    from pyxen.cli.xlconsole import console_session
    reply = call("console", domain=args[0])
    return console_session(int(reply["domid"]), reply["path"])


def fast_domid(args: list[str]) -> int:
    """xl domid NAME (xl_misc.c main_domid): the domid of the domain with that name."""
    if len(args) != 1:
        return -1
    for d in call("list")["domains"]:
        if d["name"] == args[0]:
            _out(f"{d['domid']}\n")
            return 0
    fail(f"Can't get domid of domain name '{args[0]}', maybe this domain does not exist.")


def fast_destroy(args: list[str]) -> int:
    if len(args) != 1 or args[0] in ("0", "Domain-0"):  # domain 0: the click command's lines
        return -1
    call("destroy", domain=args[0])
    return 0


def fast_pause(args: list[str]) -> int:
    if len(args) != 1:
        return -1
    call("pause", domain=args[0])
    return 0


def fast_unpause(args: list[str]) -> int:
    if len(args) != 1:
        return -1
    call("unpause", domain=args[0])
    return 0


def _shutdown(reason: str, args: list[str]) -> int:
    """xl shutdown/reboot DOMAIN with no options: cli/xl.py's _shutdown for one domain."""
    if len(args) != 1:
        return -1
    verb = "Shutting down" if reason == "poweroff" else "Rebooting"
    with connect() as c:
        try:
            domid = int(c.request("console", domain=args[0])["domid"])
            sys.stderr.write(f"{verb} domain {domid}\n")  # click.echo(err=True): no -T stamp
            sys.stderr.flush()
            c.request("shutdown", domain=args[0], reason=reason, force=False)
        except HostdError as e:
            fail(str(e))
    return 0


def fast_shutdown(args: list[str]) -> int:
    return _shutdown("poweroff", args)


def fast_reboot(args: list[str]) -> int:
    return _shutdown("reboot", args)


def fast_create(args: list[str]) -> int:
    from pyxen.cli.xl_create import fast_create as create
    return create(args)


# name -> function(args) returning the exit status, or -1 for "not mine: take the click
# command". Only called when no argument starts with '-' and without -N, except for the
# commands in OWN_OPTIONS, which read their options (and -N) themselves. One line per
# command.
FAST: dict[str, Callable[[list[str]], int]] = {
    "list": fast_list,
    "info": fast_info,
    "console": fast_console,
    "domid": fast_domid,
    "destroy": fast_destroy,
    "pause": fast_pause,
    "unpause": fast_unpause,
    "shutdown": fast_shutdown,
    "reboot": fast_reboot,
    "create": fast_create,
}
OWN_OPTIONS = {"create"}


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- the table

def lookup(s: str, table: list[CmdSpec]) -> CmdSpec | None:
    """xl's cmdtable_lookup: an exact name, or a prefix of exactly one command."""
    found = None
    count = 0
    for spec in table:
        if spec.name.startswith(s):
            if len(s) == len(spec.name):
                return spec
            found = spec
            count += 1
    return found if count == 1 else None


def _click_spec(name: str, cmd: Any) -> CmdSpec:
    """A CmdSpec for a pyxen command that xl's table does not have."""
    import click

    from pyxen.cli.xl_cmdtable import CmdSpec
    desc = (cmd.short_help or (cmd.help or "").split("\n")[0] or name).strip().rstrip(".")
    pieces = []
    opts = [p for p in cmd.params if isinstance(p, click.Option)
            and not set(p.opts) & {"-h", "--help"}]
    if opts:
        pieces.append("[options]")
    for p in cmd.params:
        if isinstance(p, click.Argument):
            meta = f"<{p.name.capitalize()}>" if p.required else f"[{p.name.capitalize()}]"
            pieces.append(meta + (" ..." if p.nargs == -1 else ""))
    options = "\n".join(f"{', '.join(o.opts):<24}{o.help or ''}".rstrip() for o in opts)
    return CmdSpec(name, bool(getattr(cmd, "xl_dryrun", False)), True, desc,
                   " ".join(pieces), options or None)


class Commands:
    """xl's table plus pyxen's own commands (at the end), and which of them pyxen has."""

    def __init__(self, xl_module: Any) -> None:
        from pyxen.cli.xl_cmdtable import XL_TABLE
        self.group = xl_module.cli
        clicks = self.group.commands
        self.implemented = set(clicks) | set(FAST)
        known = {s.name for s in XL_TABLE}
        self.table = list(XL_TABLE) + [_click_spec(n, c) for n, c in clicks.items()
                                       if n not in known]

    def listed(self) -> list[CmdSpec]:
        return [s for s in self.table if s.name in self.implemented]


def help_text(cmds: Commands, command: str | None) -> str:
    """xl.c's help(): the command list, or one command's usage."""
    if not command or command == "help":
        out = ["Usage xl [-vfNtT] <subcommand> [args]\n\n", "xl full list of subcommands:\n\n"]
        for spec in cmds.listed():
            line = f" {spec.name:<19} "
            if len(spec.name) > 19:
                line += f"\n {'':<19} "
            out.append(f"{line}{spec.desc}\n")
        return "".join(out)
    spec = lookup(command, cmds.table)
    if spec is None or spec.name not in cmds.implemented:
        return f'command "{command}" not implemented\n'
    text = (f"Usage: xl [-vtT{'f' if spec.modifies else ''}{'N' if spec.can_dryrun else ''}] "
            f"{spec.name} {spec.usage}\n\n{spec.desc}.\n\n")
    if spec.options:
        text += f"Options:\n\n{spec.options}\n"
    return text


# ----------------------------------------------------------------------------- main

def parse_globals(argv: list[str]) -> int:
    """getopt(argc, argv, "+vftTN"): returns the index of the subcommand."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i + 1
        if not arg.startswith("-") or arg == "-":
            return i
        if arg.startswith("--"):
            one_line(f"xl: unrecognized option '{arg}'")
            fail("unknown global option")
        for c in arg[1:]:
            if c not in GLOBAL_OPTS:
                one_line(f"xl: invalid option -- '{c}'")
                fail("unknown global option")
            if c == "v":
                G.verbose += 1
            elif c == "N":
                G.dryrun = True
            elif c == "f":
                G.force = True
            elif c == "t":
                G.progress_cr = True
            elif c == "T":
                G.timestamps = True
        i += 1
    return i


def main(argv: list[str] | None = None, xl_module: Any = None) -> int:
    """Run xl; every failure is one line on stderr and xl's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            i = parse_globals(argv)
            if i >= len(argv):
                _out(help_text(_commands(xl_module), None))
                return 1
            cmd, args = argv[i], argv[i + 1:]
            fast = FAST.get(cmd)
            if (fast is not None and not os.environ.get("PYXEN_XL_SLOW")
                    and (cmd in OWN_OPTIONS or not G.dryrun
                         and not any(a.startswith("-") for a in args))):
                rc = fast(args)
                if rc >= 0:
                    return rc
            return dispatch(_commands(xl_module), cmd, args)
        except (XlError, HostdError) as e:
            one_line(str(e))
            return e.code if isinstance(e, XlError) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def _commands(xl_module: Any) -> Commands:
    if xl_module is None:
        from pyxen.cli import xl as xl_module
    return Commands(xl_module)


def dispatch(cmds: Commands, cmd: str, args: list[str]) -> int:
    spec = lookup(cmd, cmds.table)
    if spec is None:
        if cmd == "help":
            _out(help_text(cmds, args[0] if args else None))
            return 0
        fail("command not implemented")
    if spec.name not in cmds.implemented:
        fail("command not implemented")
    click_cmd = cmds.group.commands.get(spec.name)
    if G.dryrun and not (spec.can_dryrun and (spec.name in DRYRUN
                                               or getattr(click_cmd, "xl_dryrun", False))):
        fail("command does not implement -N (dryrun) option")
    for a in args:
        if a == "--":
            break
        if a in ("-h", "--help"):
            _out(help_text(cmds, spec.name))
            return 0
    if click_cmd is None:  # a command only the fast path has
        if any(a.startswith("-") for a in args):
            one_line(f"option `{next(a for a in args if a.startswith('-'))[1:2]}' "
                     "not supported.")
            return 2
        rc = FAST[spec.name](args)
        if rc < 0:
            return usage_error(cmds, spec.name, 1)
        return rc
    from pyxen.cli import xlconf
    xlconf.load()
    return run_click(cmds, spec.name, click_cmd, args)


def usage_error(cmds: Commands, name: str, nargs: int) -> int:
    """def_getopt's "too few arguments": the line on stderr, the usage on stdout, 2."""
    one_line(f"'xl {name}' requires at least {nargs} argument{'s' if nargs > 1 else ''}.")
    _out(help_text(cmds, name))
    return 2


def required_args(click_cmd: Any) -> int:
    import click
    return sum(1 for p in click_cmd.params if isinstance(p, click.Argument) and p.required)


def run_click(cmds: Commands, name: str, click_cmd: Any, args: list[str]) -> int:
    import click
    try:
        cmds.group.main(args=[name, *args], prog_name="xl", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except click.Abort:
        one_line("aborted")
        return 1
    except click.MissingParameter as e:
        if isinstance(e.param, click.Argument):
            return usage_error(cmds, name, required_args(click_cmd))
        one_line(f"xl {name}: {e.format_message()}")
        return 2
    except click.NoSuchOption as e:
        one_line(f"option `{e.option_name.lstrip('-')}' not supported.")
        return 2
    except click.BadOptionUsage as e:  # an option without its value: getopt's '?'
        one_line(f"option `{e.option_name.lstrip('-')}' not supported.")
        return 2
    except click.ClickException as e:
        one_line(f"xl {name}: {e.format_message()}")
        return 2
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
