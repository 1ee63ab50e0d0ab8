"""Command line: ``odtkit devices``, ``odtkit links``, ``odtkit device NAME``,
``odtkit link NAME``, ``odtkit models``, ``odtkit estimate --model M --scheme S --batch B
[--precision P] [--optimizer O] [--engine E] [--device D] [--json]``, ``odtkit lab``,
``odtkit app [--port N] [--no-browser]`` and ``odtkit --version``.

Unknown names and bad values exit with status 2 and say what is valid on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__, hardware
from ._cli_memory import (
    add_estimate_arguments,
    lab_command,
    models_rows,
    print_estimate,
)
from .hardware import (
    DeviceProfile,
    LinkProfile,
    ProfileError,
    UnknownNameError,
    show_device_number,
    show_link_number,
)

LEGEND = ("~ derived (e.g. clock x MAC per cycle), ? not known (see `odtkit device NAME`), "
          "- none; peaks in MAC/s (FLOP = 2 MAC)")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
                 left: int = 1) -> str:
    """Aligned plain-text table: the first ``left`` columns left-aligned (text), the rest
    right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i < left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _cell(profile: DeviceProfile | LinkProfile, key: str, show) -> str:
    quantity = profile.sources.get(key)
    if quantity is None:
        return "?"
    if quantity.value == 0:
        return "-"
    return ("~" if quantity.derived else "") + show(key, quantity.value)


def devices_table(names: Sequence[str] | None = None) -> str:
    """The catalogue as an aligned table with human units."""
    profiles = [hardware.device(n) for n in (names if names is not None else hardware.devices())]
    show = show_device_number
    rows = [
        [p.name, p.kind, *(_cell(p, k, show) for k in (
            "sram_bytes", "dram_bytes", "flash_bytes", "clock_hz",
            "peak_macs_per_s.fp32", "peak_macs_per_s.int8", "bandwidth_bytes_per_s"))]
        for p in profiles
    ]
    headers = ["name", "kind", "SRAM", "DRAM", "flash", "clock", "fp32 peak", "int8 peak",
               "bandwidth"]
    return format_table(headers, rows, left=2) + "\n" + LEGEND


def links_table() -> str:
    """The links as an aligned table with human units."""
    show = show_link_number
    rows = [
        [p.name, *(_cell(p, k, show) for k in (
            "throughput_bits_per_s", "latency_s", "energy_per_bit_j", "duty_cycle"))]
        for p in (hardware.link(n) for n in hardware.links())
    ]
    headers = ["name", "throughput", "latency", "energy/bit", "duty cycle"]
    return format_table(headers, rows) + "\n~ derived, ? not known (see `odtkit link NAME`)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odtkit", description="odtkit: on-device training, measured: the hardware "
        "catalogue, the model zoo, training-memory estimates and the lab book.")
    parser.add_argument("--version", action="version", version=f"odtkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("devices", help="list the device catalogue")
    listing.add_argument("--kind", choices=hardware.KINDS, help="only devices of this kind")
    commands.add_parser("links", help="list the network links")
    one = commands.add_parser("device", help="one device with the source of every number")
    one.add_argument("name", help="device name (case and separators do not matter) or a .toml")
    one_link = commands.add_parser("link", help="one link with the source of every number")
    one_link.add_argument("name", help="link name or a .toml file")
    commands.add_parser("models", help="list the model zoo")
    add_estimate_arguments(commands.add_parser(
        "estimate", help="the training memory of one step of a zoo model (odt.estimate)"))
    commands.add_parser("lab", help="open the lab book in JupyterLab")
    commands.add_parser("native", help="build odtkit's compiled ops (once, about "
                        "a minute; needs a C++ compiler and ninja) and say which ops run")
    app = commands.add_parser("app", help="serve the budget explorer as a page (Voila, "
                              "on 127.0.0.1; Ctrl-C stops it)")
    # odtkit.app.DEFAULT_PORT written out, so that no command's start-up imports the app
    # (tests/test_cli.py holds them equal)
    app.add_argument("--port", default="8866", help="port on 127.0.0.1 (default 8866)")
    app.add_argument("--no-browser", action="store_true",
                     help="only print the URL, open no browser")
    return parser


def run_app(port_text: str, open_browser: bool) -> int:
    """``odtkit app``: Voila on the budget explorer at 127.0.0.1:PORT until Ctrl-C or until
    the server stops; returns the exit status."""
    import webbrowser

    from . import app

    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--port must be a whole number in 1..65535, got {port_text!r}; "
                         f"e.g. --port {app.DEFAULT_PORT}") from None
    app.check_port(port, name="--port")
    try:
        server, url = app.serve(port)
    except ModuleNotFoundError as err:  # no Voila: say how to get it
        raise ValueError(str(err)) from None
    try:
        print(f"odtkit app: the budget explorer at {url}\n(Ctrl-C stops the server)",
              flush=True)
        if open_browser and app.wait_until_listening(port, server=server):
            webbrowser.open(url)
        return server.wait()
    except KeyboardInterrupt:
        print("odtkit app: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        app.stop(server)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad usage or unknown name)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # argparse reports usage errors itself
        return int(stop.code or 0)
    try:
        if args.command == "devices":
            print(devices_table(hardware.devices(kind=args.kind)))
        elif args.command == "links":
            print(links_table())
        elif args.command == "device":
            print(hardware.device(args.name).describe())
        elif args.command == "link":
            print(hardware.link(args.name).describe())
        elif args.command == "models":
            print(format_table(*models_rows(), left=2))
        elif args.command == "estimate":
            print_estimate(args)
        elif args.command == "lab":
            command = lab_command()
            sys.stdout.flush()
            os.execv(command[0], command)
        elif args.command == "app":
            return run_app(args.port, open_browser=not args.no_browser)
        elif args.command == "native":
            from .engine import native

            return native.main()
    except (UnknownNameError, ProfileError, ValueError, FileNotFoundError) as err:
        print(f"odtkit: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `odtkit devices | head`: the reader left early
        # no traceback, and none at exit when Python flushes stdout again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
