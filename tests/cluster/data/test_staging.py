"""A corpus is written into a staging folder named for its process and renamed into place; what a
killed writer left (its staging folder, or the old corpus it had moved aside) is cleared by the next
writer of the same folder, and a live writer's staging folder is left alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from cluster.data.kaldi import OTHER_HOST_LIFE, move_into_place, staging_dir
from cluster.processes import owner


def _gone(what: str = "owner") -> str:
    """The host:pid.start (``what="this_process"``: the bare pid.start that writers recorded before
    the host) of a process that has exited."""
    out = subprocess.run([sys.executable, "-c", f"from cluster.processes import {what}; print({what}())"],
                         capture_output=True, text=True, check=True, cwd=os.getcwd())
    return out.stdout.strip()


def test_a_killed_writers_staging_folder_is_removed_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "corpus"
    dead = tmp_path / f".corpus.tmp-{_gone()}"
    (dead / "train").mkdir(parents=True)
    older = tmp_path / f".corpus.tmp-{_gone('this_process')}"  # named as writers did before the host
    older.mkdir()
    live = tmp_path / f".corpus.tmp-{socket.gethostname()}:{os.getppid()}"  # the parent runs: another writer
    live.mkdir()
    other = tmp_path / f".corpus2.tmp-{_gone()}"  # another corpus's: not this writer's business
    other.mkdir()
    # a writer on another host sharing the storage (its pid means nothing here): alone until stale
    busy, stale = tmp_path / ".corpus.tmp-elsewhere:1.5", tmp_path / ".corpus.tmp-elsewhere:2.5"
    busy.mkdir(), stale.mkdir()
    os.utime(stale, (time.time() - OTHER_HOST_LIFE - 60,) * 2)
    tmp = staging_dir(out)
    assert tmp == tmp_path / f".corpus.tmp-{owner()}" and tmp.is_dir() and not any(tmp.iterdir())
    assert not dead.exists() and not older.exists() and live.is_dir() and other.is_dir()
    assert busy.is_dir() and not stale.exists()
    (tmp / "manifest.json").write_text("{}")
    move_into_place(tmp, out)
    assert (out / "manifest.json").is_file() and not tmp.exists()


def test_a_corpus_moved_aside_by_a_killed_writer_is_put_back():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        aside = root / f".corpus.old-{_gone()}"  # killed between move_into_place's two renames
        aside.mkdir()
        (aside / "manifest.json").write_text('{"old": 1}')
        half = root / f".corpus.tmp-{_gone()}"
        half.mkdir()
        staging_dir(root / "corpus")
        assert (root / "corpus" / "manifest.json").read_text() == '{"old": 1}'
        assert not aside.exists() and not half.exists()
        # where a new corpus already took its place, the one moved aside is only removed
        again = root / f".corpus.old-{_gone()}"
        again.mkdir()
        staging_dir(root / "corpus")
        assert not again.exists() and (root / "corpus" / "manifest.json").is_file()
