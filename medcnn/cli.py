"""``medcnn`` command line: a thin layer over the library.

Each subcommand lives in the module that owns its logic and registers itself through ``COMMANDS``:
a mapping of name -> "module:function" where the function takes an ``argparse`` subparser to configure
and returns the callable to run with the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medcnn import __version__
from medcnn.errors import user_error

# name -> "module:add_parser" ; modules are imported lazily so `medcnn --help` stays fast.
COMMANDS: dict[str, str] = {
    "convert": "medcnn.convert:add_parser",
    "report": "medcnn.report.pdf:add_parser",
    "predict": "medcnn.predict:add_parser",
    "monailabel": "medcnn.monailabel.launcher:add_parser",
    "train-ensemble": "medcnn.train_ensemble:add_parser",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medcnn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        module, func = target.split(":")
        add_parser = getattr(importlib.import_module(module), func)
        add_parser(sub.add_parser(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except Exception as exc:  # the file-named medcnn error first, even when MONAI wrapped it
        err = user_error(exc) or (exc if isinstance(exc, (ValueError, OSError)) else None)
        if err is None:
            raise
        print(f"medcnn {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
