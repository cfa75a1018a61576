"""An owner names one process: its host, pid and start, so a pid reused after a kill is not taken
for the process that left a running row or a writer's marker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from cluster.processes import started as _started
from cluster.processes import owner, owner_alive


def test_this_process_is_alive_and_names_its_start():
    me = owner()
    host, _, proc = me.rpartition(":")
    pid, _, start = proc.partition(".")
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert start == _started(os.getpid()) and start.isdigit()
    assert owner_alive(me)


def test_a_pid_that_started_at_another_time_is_a_reuse_not_the_owner():
    host, _, proc = owner().rpartition(":")
    pid, _, start = proc.partition(".")
    assert not owner_alive(f"{host}:{pid}.{int(start) + 1}")  # this pid, another process's start


def test_an_exited_process_is_gone_and_an_old_owner_without_start_is_still_read():
    child = subprocess.run([sys.executable, "-c", "from cluster.processes import owner; print(owner())"],
                           capture_output=True, text=True, check=True, cwd=os.getcwd())
    gone = child.stdout.strip()
    assert gone.rpartition(":")[2].partition(".")[2]  # it recorded a start
    assert not owner_alive(gone)
    assert owner_alive(f"{socket.gethostname()}:{os.getpid()}")  # the older host:pid form
    assert not owner_alive(None) and not owner_alive("")


def test_another_hosts_owner_is_alive_until_stale():
    import time

    assert owner_alive("elsewhere:1.5")
    assert owner_alive("elsewhere:1.5", stale_after=60, since=time.time())
    assert not owner_alive("elsewhere:1.5", stale_after=60, since=time.time() - 120)
