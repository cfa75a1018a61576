"""The ``gatelens`` command line: one parser per sub-command (``parsers.py``), one handler module
per group of commands, and one place where errors become exit statuses (``main``).

Every error a person should read is a ``cluster.errors.GatelensError``: its message is printed on
one line as ``gatelens COMMAND: MESSAGE`` and its ``exit_status`` is returned (2 for bad input, 3
for a busy store, 1 otherwise); a missing file is bad input too.
"""

from __future__ import annotations

import importlib
import sys

from cluster import runtime
from cluster.errors import EXIT_ERROR, EXIT_INPUT, GatelensError
from service.cli.parsers import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _, function = args.handler.partition(":")
    runtime.say = lambda m: print(m, file=sys.stderr, flush=True)  # which Ray cluster a command runs on
    try:
        # deferred: a handler imports torch / Ray / DuckDB, which `gatelens --help` must not wait for
        handler = getattr(importlib.import_module(module), function)
        return handler(args)
    except GatelensError as e:
        print(f"gatelens {args.command}: {e.prefix}{e}", file=sys.stderr)
        return e.exit_status
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"gatelens {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as e:  # disk full, I/O error: one line, not a traceback
        print(f"gatelens {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"gatelens {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
