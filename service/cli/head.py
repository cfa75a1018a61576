"""``gatelens up`` / ``down``: a local Ray head with the dashboard, for ``ray job submit``."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys


def cmd_up(args: argparse.Namespace) -> int:
    with socket.socket() as sock:  # the agent's default 52365 may be held by another Ray on this machine
        sock.bind(("", 0))
        agent_port = sock.getsockname()[1]
    cmd = ["ray", "start", "--head", "--include-dashboard=true", f"--dashboard-port={args.dashboard_port}",
           f"--port={args.port}", f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats"]
    if args.num_cpus is not None:
        cmd.append(f"--num-cpus={args.num_cpus}")
    print("$ " + " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd)
    if rc == 0:
        print(f"head up: submit with  ray job submit --address http://127.0.0.1:{args.dashboard_port} "
              f"--working-dir . -- gatelens grid --study table1 --profile demo\n"
              f"(token auth: clients read ~/.ray/auth_token; set RAY_AUTH_MODE=token if asked)")
    return rc


def cmd_down(args: argparse.Namespace) -> int:
    return subprocess.call(["ray", "stop"] + (["--force"] if args.force else []))
