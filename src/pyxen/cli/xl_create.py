"""`xl create` (tools/xl/xl_vmcontrol.c main_create) without click: the command body that
the click command (cli/xl.py) and xl's lean path (cli/xlmain.py's FAST table) share, and
the lean path's option parser.

`xl create` is what people time and run in loops, so it starts without click, rich, json
or the libxl JSON printer; the config parsers (toolstack/config.py and what it imports)
are loaded only once the options have been read. Anything the lean parser does not know
(long options, -h, `--`, an option it cannot read) goes to the click command, which
prints xl's wording for it: both paths print the same bytes (tests/toolstack/
test_xl_create_lean.py).
"""

from __future__ import annotations

from pyxen.cli.xlcore import G, connect, fail, one_line

FLAGS = {"c": "console", "n": "dryrun", "p": "paused", "q": "quiet"}


def parse_options(args: list[str]) -> tuple[dict[str, bool], str | None, list[str]] | None:
    """click's reading of create's options (-c -n -p -q, -f FILE, combined flags, options
    among the arguments), or None for anything else: the click command takes it."""
    flags = dict.fromkeys(FLAGS.values(), False)
    cfgfile = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if not a.startswith("-"):
            rest.append(a)
            continue
        if a == "-" or a.startswith("--"):
            return None
        for j, c in enumerate(a[1:], 1):
            if c in FLAGS:
                flags[FLAGS[c]] = True
            elif c == "f":
                value = a[j + 1:]
                if not value:
                    if i >= len(args) or args[i].startswith("-"):
                        return None
                    value = args[i]
                    i += 1
                cfgfile = value
                break
            else:
                return None
    return flags, cfgfile, rest


def fast_create(args: list[str]) -> int:
    """The lean path's `xl create`: -1 hands the arguments to the click command."""
    parsed = parse_options(args)
    if parsed is None:
        return -1
    flags, cfgfile, rest = parsed
    from pyxen.cli import xlconf
    xlconf.load()  # as xlmain.dispatch does before any click command
    return create(flags["console"], flags["dryrun"], flags["paused"], flags["quiet"],
                  cfgfile, rest)


def create(console: bool, dryrun: bool, paused: bool, quiet: bool, cfgfile: str | None,
           args: list[str] | tuple[str, ...]) -> int:
    """Create a domain from config file <filename>; key=value pairs override it. Returns
    the exit status (the console session's with -c)."""
    overrides: list[str] = []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif cfgfile is None:
            cfgfile = a
        else:
            fail(f"xl create: more than one config file given: {cfgfile!r} and {a!r}")
    dryrun = dryrun or G.dryrun
    if cfgfile is not None:  # xl reads the file whole first (libxl_read_file_contents)
        try:
            with open(cfgfile, "rb"):
                pass
        except OSError as e:  # main_create returns -ERROR_FAIL
            fail(f"Failed to read config file: {cfgfile}: {e.strerror}", 3)
    from pyxen.cli import xlconf
    from pyxen.toolstack import config as domconfig
    from pyxen.toolstack.config import ConfigError
    from pyxen.toolstack.xlcfg import XlCfgError
    warn = one_line
    try:
        if cfgfile is None:
            if not overrides:
                fail("Config file not specified (usage: xl create [-c] [-n] [-p] [-q] "
                     "<ConfigFile> [key=value ...])")
            from pyxen.toolstack.xlcfg import XlConfig, apply_override
            xc = XlConfig("command line")
            for o in overrides:
                apply_override(xc, o)
            cfg = domconfig.from_xlconfig(xc, warn=warn)
        else:
            cfg = domconfig.load(cfgfile, overrides, warn=warn)
        cfg.vifs = [xlconf.vif_defaults(v) for v in cfg.vifs]
        cfg.validate()
        if dryrun:  # libxl's domain_config JSON, as xl prints it
            xlconf.check_output_format()
            import sys

            from pyxen.toolstack.libxl_json import dumps as libxl_dumps
            sys.stdout.write(libxl_dumps(cfg) + "\n")
            sys.stdout.flush()
            return 0
        cfg.check_files()
    except (XlCfgError, ConfigError) as e:
        fail(str(e))
    from pyxen.toolstack.client import HostdError
    with connect() as c:
        try:
            reply = c.request("create", config=cfg.to_json(), paused=paused)
        except HostdError as e:
            fail(str(e))
    if console:
        from pyxen.cli.xlconsole import console_session
        return console_session(int(reply["domid"]), reply["console"])
    return 0
