"""``scratch server --workers N``: N server processes on one machine, sharing the UDP ports and the database.

Each worker is a cluster node (``--cluster``, node id ``<node-id>-w<k>``) bound to the same CoAP/DTLS ports with
SO_REUSEPORT: the kernel hashes each datagram's source address and port to one of the sockets, so a device's
datagrams (its DTLS session, its registration) always reach the same worker while the workers stay the same.
Worker 1 serves the API on the address given; the others on a free port of the same host (each node's API answers
for every device: a request for a device another node holds is forwarded to it, see docs/cluster.md).

The supervisor (this module) starts the workers, restarts one that exits unasked (its devices, hashed to the other
workers meanwhile, handshake and register again, and its campaign jobs are adopted like a dead node's), and stops
them all on SIGINT/SIGTERM: SIGINT to each, then SIGKILL to what is left after ``STOP_TIMEOUT`` seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["STOP_TIMEOUT", "run_workers", "worker_args"]

STOP_TIMEOUT = 20.0
RESTART_DELAY = 1.0
RESTARTS_PER_MINUTE = 5  # a worker that keeps dying is not restarted in a loop: the supervisor stops


def worker_args(argv: Sequence[str], index: int) -> list[str]:
    """The ``scratch server`` arguments of worker ``index`` (1-based): ``argv`` (what followed ``server``) without
    ``--workers``, plus ``--worker index``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [*out, "--worker", str(index)]


def run_workers(argv: Sequence[str], count: int, *, say: Callable[[str], None],
                command: Sequence[str] = (sys.executable, "-m", "lwm2m_server.cli.app", "server")) -> int:
    """Run ``count`` workers until SIGINT/SIGTERM (exit 0) or until one keeps dying (exit 1)."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    workers: dict[int, subprocess.Popen[bytes]] = {}
    deaths: list[float] = []
    try:
        for k in range(1, count + 1):
            workers[k] = subprocess.Popen([*command, *worker_args(argv, k)])
        say(f"{count} workers started (pids {', '.join(str(p.pid) for p in workers.values())})")
        while not stopping:
            time.sleep(0.2)
            for k, proc in list(workers.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < 60] + [now]
                if len(deaths) > RESTARTS_PER_MINUTE:
                    say(f"worker {k} exited ({code}); workers keep dying: stopping")
                    return 1
                say(f"worker {k} exited ({code}); restarting it")
                time.sleep(RESTART_DELAY)
                workers[k] = subprocess.Popen([*command, *worker_args(argv, k)])
        return 0
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
