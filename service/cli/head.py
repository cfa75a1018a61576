"""``gatelens up`` / ``down``: a local Ray head with the dashboard and Ray's token auth, for
``ray job submit`` and for every gatelens command on this machine (``cluster.runtime.ensure_ray``
joins it with the token)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def cmd_up(args: argparse.Namespace) -> int:
    # The agent's default 52365 and the Ray client server's 10001 may be held by another Ray on
    # this machine; nobody here connects to them by number.
    ray = Path(sys.executable).parent / "ray"
    cmd = [str(ray) if ray.is_file() else "ray", "start", "--head", "--include-dashboard=true",
           f"--dashboard-port={args.dashboard_port}", f"--port={args.port}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           "--disable-usage-stats"]
    if args.num_cpus is not None:
        cmd.append(f"--num-cpus={args.num_cpus}")
    if args.block:
        cmd.append("--block")
    print("$ " + " ".join(cmd), file=sys.stderr)
    if args.block:
        print(f"head up in the foreground (Ctrl-C stops it); gatelens commands on this machine join it "
              f"with its token auth; `ray job submit` needs RAY_AUTH_MODE=token", flush=True)
    # Token auth always (Ray makes ~/.ray/auth_token if there is none): a head without it runs
    # whatever anyone who reaches its ports sends. An explicit RAY_AUTH_MODE is kept.
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if env["RAY_AUTH_MODE"] == "token" and not token.is_file() and not os.environ.get("RAY_AUTH_TOKEN"):
        made = subprocess.run([cmd[0], "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
        if made.returncode != 0:
            print(f"gatelens up: cannot make a Ray auth token: {made.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return made.returncode
        print(f"made a Ray auth token at {token} (every client of this head reads it)", file=sys.stderr)
    rc = subprocess.call(cmd, env=env)
    if rc == 0 and not args.block:
        print(f"head up: gatelens commands on this machine join it (with its token auth, nothing to export);\n"
              f"submit with  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:{args.dashboard_port} "
              f"--working-dir . -- gatelens grid --study table1 --profile demo")
    return rc


def cmd_down(args: argparse.Namespace) -> int:
    return subprocess.call(["ray", "stop"] + (["--force"] if args.force else []))
