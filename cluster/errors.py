"""The one family of errors gatelens reports to a person, each carrying the exit status it means.

Every layer raises these (the corpus reader, checkpoints, analyses, the store, the CLI), and the
command line handles them once, in ``service.cli.main``: the message on one line, then the status.

    0  ok
    1  error: something failed that is not the input's fault (a crashed task, a bug)
    2  refused / bad input: a file, utterance, argument or statement at fault; nothing was changed
    3  busy: the store is held by another process; try again

They live at the bottom layer so that ``cluster/`` (which runs on Ray workers) can raise them
without importing anything above it.
"""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_BUSY = 0, 1, 2, 3


class GatelensError(RuntimeError):
    """An error reported in one line, ``gatelens COMMAND: <prefix><message>``; ``exit_status`` is
    what the command line exits with."""

    exit_status = EXIT_ERROR
    prefix = "error: "


class InputError(GatelensError):
    """The input is at fault (file, utterance, argument); the message names it. Nothing was changed."""

    exit_status = EXIT_INPUT


class BusyError(GatelensError):
    """A resource (the store) is held by another process for longer than the wait allowed."""

    exit_status = EXIT_BUSY
