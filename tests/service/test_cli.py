"""Every sub-command of the gatelens console script answers --help."""

import contextlib
import shutil
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


def test_a_head_that_is_meant_but_does_not_answer_is_an_error_not_a_private_cluster(tmp_path):
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    # what every command runs first (a fresh process: this one may have joined the test cluster)
    out = subprocess.run([sys.executable, "-c", "import ray, sys\nfrom cluster.runtime import ensure_ray\n"
                          "from cluster.errors import GatelensError\ntry:\n    ensure_ray()\n"
                          "except GatelensError as e:\n    print(e, file=sys.stderr)\n    sys.exit(1)\n"
                          "print(ray.is_initialized())"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"cannot join the Ray head at 127.0.0.1:{port} (RAY_ADDRESS): nothing answers there; nothing was run "
        f"on a private cluster instead")


def test_a_command_joins_a_token_auth_head_without_exporting_ray_auth_mode(tmp_path):
    """`gatelens up` starts a head with Ray's token auth; a later command (here `watch --status`)
    joins it without RAY_AUTH_MODE in its environment, and says which cluster it runs on."""
    import os
    import signal
    import socket
    import tempfile
    import time

    def free() -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    temp = Path(tempfile.mkdtemp(prefix="gl-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_TMPDIR": str(temp), "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    gatelens = str(Path(sys.executable).parent / "gatelens")
    up = subprocess.Popen([gatelens, "up", "--port", str(free()), "--dashboard-port", str(free()), "--num-cpus", "1",
                           "--block"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        current = temp / "ray" / "ray_current_cluster"
        deadline = time.time() + 90
        while not current.is_file() and time.time() < deadline and up.poll() is None:
            time.sleep(0.5)
        assert current.is_file(), up.stdout.read() if up.poll() is not None else "no head after 90 s"
        assert (tmp_path / ".ray" / "auth_token").is_file()  # the head runs with token auth
        head = current.read_text().strip()
        status = subprocess.run([gatelens, "watch", "--status", "--storage", str(tmp_path / "runs"),
                                 "--store", str(tmp_path / "store.duckdb")], env=env, capture_output=True,
                                text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        assert f"ray: on the cluster at {head} (the head `gatelens up` started" in status.stderr
        assert "watcher: not running" in status.stdout and "Unauthenticated" not in status.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)  # whatever of the head is left in its group
        shutil.rmtree(temp, ignore_errors=True)
