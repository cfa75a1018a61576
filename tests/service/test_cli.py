"""Every sub-command of the gatelens console script answers --help."""

import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_the_paper_workflow_has_its_commands():
    assert {"corpus", "train", "grid", "results", "up", "down", "export-posteriors", "capture", "sql",
            "analyse", "claims", "report", "watch"} <= set(subcommands())


@pytest.mark.parametrize("command", subcommands())
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gatelens {command}")


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "gatelens"  # pyproject's [project.scripts] entry
    assert script.is_file()
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "corpus" in out.stdout and "watch" in out.stdout
