"""What the bench scripts share: the processes they start (each in its own process group, always stopped), CPU and
memory read from /proc, free loopback ports, the Leshan server demo, and rounding for printed figures. Linux only
(/proc)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Children:
    """Every process a script starts, each in a process group of its own; stopped (TERM to the group, then
    KILL) on exit, on error and on SIGTERM/SIGINT."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("cwd", REPO)
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the process left behind in its group
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=10)


CHILDREN = Children()


def proc_sample(pid: int) -> dict[str, float]:
    """CPU seconds of a process (all threads: ``user_s``, ``sys_s`` and their sum ``cpu_s``), its RSS and peak RSS
    (``rss_kib``, ``hwm_kib``), from /proc; NaN CPU and 0 memory once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
        out = {"user_s": user, "sys_s": system, "cpu_s": user + system, "rss_kib": 0.0, "hwm_kib": 0.0}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kib"] = float(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["hwm_kib"] = float(line.split()[1])
        return out
    except (OSError, ValueError, IndexError):
        nan = float("nan")
        return {"user_s": nan, "sys_s": nan, "cpu_s": nan, "rss_kib": 0.0, "hwm_kib": 0.0}


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of all CPUs busy over ``seconds``."""
    m0, t0 = machine_cpu_s(), time.perf_counter()
    time.sleep(seconds)
    return 100.0 * (machine_cpu_s() - m0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def stop_children_on_signals() -> None:
    """SIGTERM and SIGINT stop every child in :data:`CHILDREN`, then exit (128 + the signal)."""

    def on_signal(signum: int, _frame: object) -> None:
        CHILDREN.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def machine_note() -> tuple[float, str]:
    """How busy the machine is (%, over 1 s), and ``N CPUs; machine X% busy before the start`` (with a warning
    when it is not idle) for a bench's header."""
    busy = machine_busy(1.0)
    return busy, (f"{os.cpu_count()} CPUs; machine {busy:.0f}% busy before the start"
                  f"{' -- WARNING: not idle' if busy > 10 else ''}")


def wait_idle(limit: float, busy_pct: float = 10.0) -> float:
    """Wait (up to ``limit`` s) until the machine is less than ``busy_pct`` busy over 2 s; returns the last figure."""
    deadline = time.monotonic() + limit
    while True:
        busy = machine_busy(2.0)
        if busy < busy_pct or time.monotonic() >= deadline:
            return busy
        print(f"   (machine {busy:.0f}% busy: waiting for it to calm down)", flush=True)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LeshanServer:
    """A running Leshan server demo: its process and its ports on 127.0.0.1."""

    proc: subprocess.Popen[Any]
    coap: int
    coaps: int
    web: int


@contextlib.contextmanager
def leshan_server(launcher: str, start_timeout: float = 90.0) -> Iterator[LeshanServer]:
    """The Eclipse Leshan server demo on free loopback ports, in a folder of its own, up once its REST API answers;
    its whole process group is stopped on exit (SIGTERM, then SIGKILL after 30 s)."""
    with tempfile.TemporaryDirectory(prefix="leshan-bench-") as tmp:
        coap, coaps, web = free_port(), free_port(), free_port(socket.SOCK_STREAM)
        proc = subprocess.Popen([launcher, "-lh", "127.0.0.1", "-lp", str(coap), "-slh", "127.0.0.1", "-slp",
                                 str(coaps), "-wh", "127.0.0.1", "-wp", str(web)], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "LESHAN_DEMO_CWD": tmp})
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{web}/api/clients", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the Leshan server demo did not start") from None
                    time.sleep(0.3)
            yield LeshanServer(proc, coap, coaps, web)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_for_line(log: Path, proc: subprocess.Popen[Any], needle: str, timeout: float) -> None:
    """Wait until ``needle`` appears in ``log``; stop ``proc`` and raise RuntimeError (with the log's tail) when it
    does not within ``timeout`` s or the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if needle in log.read_text(errors="replace"):
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    text = log.read_text(errors="replace")[-800:] if log.exists() else ""
    CHILDREN.stop(proc)
    raise RuntimeError(f"{log.stem} did not start (no {needle!r} within {timeout:g} s): {text}")


def r(x: float | None, n: int = 3) -> float | None:
    """``x`` rounded to ``n`` places; None for None and NaN."""
    return None if x is None or x != x else round(x, n)


class JsonLinesChild:
    """A Python script run as a child process (written next to ``log``, its stderr) that reports JSON lines on
    stdout; a thread reads them. ``python_args`` go before the script (``-m cProfile -o FILE``, say)."""

    def __init__(self, script_text: str, args: Sequence[str], log: Path, python_args: Sequence[str] = ()) -> None:
        script = log.with_suffix(".py")
        script.write_text(script_text)
        self.err = log.open("w")
        self.log = log
        bench = str(Path(__file__).resolve().parent)  # the script imports helpers of bench/ (udp_counting)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (bench, os.environ.get("PYTHONPATH"))))}
        self.proc = CHILDREN.start([sys.executable, *python_args, str(script), *args], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``event`` (RuntimeError with the log's tail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("{"):
                msg: dict[str, Any] = json.loads(line)
                if msg.get("event") == event:
                    return msg
        self.err.flush()
        tail = self.log.read_text(errors="replace")[-800:]
        raise RuntimeError(f"the device driver did not report {event!r} within {timeout:g} s: {tail}")

    def close(self) -> None:
        CHILDREN.stop(self.proc, timeout=30)
        self.err.close()


def write_profile_text(prof: Path, top: int = 40) -> None:
    """A text summary (``top`` functions by own and by cumulative time) beside a cProfile file, if it exists."""
    import io
    import pstats

    if not prof.exists():
        return
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    prof.with_suffix(".txt").write_text(buf.getvalue())
