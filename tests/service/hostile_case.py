"""The shape of a hostile-input case (``tests/service/test_hostile.py`` runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list]  # the gatelens arguments, given the case's folder
    exit: int  # the exit status expected
    message: str  # a regex the last line of stderr must match
    setup: Callable[[Path], None] | None = None  # plants files in the case's folder
    changes_store: bool = False  # False: the store's rows must be identical afterwards
    marker: str | None = None  # a file (relative to the folder) that planted code would create
    timeout: float = 180.0
    # True: run as a real ``python -m service.cli`` process, for a case whose failure would exhaust or
    # hang the interpreter (memory, a runaway query) or that reaches Ray workers and third-party code;
    # the rest call ``service.cli.main`` in the test's process, as the console script does
    own_process: bool = False
