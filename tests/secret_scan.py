"""Looking for secrets where they must never be: the suite-wide leak scan (rule 6, "Secrets never leak").

A :class:`SecretSet` holds secrets (PSKs, key-encryption keys) with a label telling where each came from, and finds
any of them in a blob of bytes in every encoding a careless log line could give them: raw bytes, hex (lower and
upper case), base64 (standard and URL-safe, padded or not), the Python ``bytes`` repr (as ``repr(key)``/``str(key)``
or ``%r`` prints it, also inside a longer repr) and that repr once more escaped as a JSON string (a JSON log line).
A :class:`Finding` names the file, the line, the encoding and the secret's label, never the secret itself.

:class:`SuiteSecretScan` is the suite-wide check behind the session fixture in ``tests/conftest.py``:

* it writes every log record of the run into one file: the project's loggers (``lwm2m_server``, ``bootstrap``,
  ``client_sim``, ``firmware_object``) from DEBUG up (their level is set to DEBUG for the run), every other logger
  from INFO up (the root logger is set to INFO; nothing else is made more verbose), with exception tracebacks;
* ``scratch`` subprocesses (tests/cli) log to pipes that only the tests read; a ``sitecustomize`` put on
  ``PYTHONPATH`` for the run copies every record a child Python process emits (at the child's own levels, nothing
  changed) and any uncaught traceback into a file of the same folder;
* it records every PSK the run draws (the ``secrets`` module that :mod:`bootstrap.credentials` draws keys from is
  replaced by a recording proxy, and :meth:`CredentialStoreBase.issue`/``replace`` record the keys they hand back,
  explicit ``psk=`` ones included) and every key-encryption key :mod:`bootstrap.vault` draws; recording only: the
  values, and what the code does with them, are unchanged;
* at the end it learns the keys subprocesses issued (the active credentials of every data folder under pytest's
  base temporary folder that holds ``vault.key`` and ``scratch.db``, opened with the folder's own vault, and the
  ``psk_key`` column of every manufacturing file), then scans its log files and every ``.log``, ``.txt``,
  ``.jsonl``, ``.out`` and ``.err`` file under the base temporary folder (servers' logs, audit logs; manufacturing
  files hold their keys in the clear on purpose and are skipped) for all of them.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import os
import secrets as real_secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

MIN_SECRET_BYTES = 8
"""Shorter values are not looked for: tests use short dummy values that may turn up by chance."""

PROJECT_LOGGERS = ("lwm2m_server", "bootstrap", "client_sim", "firmware_object")
SCANNED_SUFFIXES = (".log", ".txt", ".jsonl", ".out", ".err")
MANUFACTURING_SUFFIXES = (".csv", ".json")
MAX_SCANNED_FILE_BYTES = 512 * 1024 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
CHILD_LOG_DIR_ENV = "SCRATCH_TEST_CHILD_LOG_DIR"
DB_FILENAME = "scratch.db"  # lwm2m_server.storage.database.DB_FILENAME (not imported: keeps this module light)
VAULT_KEY_FILE = "vault.key"


# ---------------------------------------------------------------- encodings


def _repr_body(key: bytes, *, escape_single_quote: bool) -> str:
    """What Python's ``repr`` of ``key`` shows between the quotes (in a single-quoted repr, or a double-quoted one,
    where ``'`` stands unescaped)."""
    out = []
    for b in key:
        if b == 0x5C:
            out.append("\\\\")
        elif b == 0x27 and escape_single_quote:
            out.append("\\'")
        elif b == 0x09:
            out.append("\\t")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x0D:
            out.append("\\r")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def encodings(key: bytes) -> dict[str, bytes]:
    """Every form ``key`` is looked for in, by name; forms that are substrings of a listed one are implied (padded
    base64 holds the unpadded form, ``repr(key)`` holds its body)."""
    key = bytes(key)
    forms: dict[str, bytes] = {
        "raw bytes": key,
        "hex (lowercase)": key.hex().encode(),
        "hex (uppercase)": key.hex().upper().encode(),
        "base64": base64.b64encode(key).rstrip(b"="),
        "base64 (URL-safe)": base64.urlsafe_b64encode(key).rstrip(b"="),
    }
    as_repr = repr(key)[2:-1]  # what repr(key), str(key) and %r show between the quotes
    other = _repr_body(key, escape_single_quote=as_repr == _repr_body(key, escape_single_quote=False))
    for name, body in (("Python bytes repr", as_repr), ("Python bytes repr (other quoting)", other)):
        forms[name] = body.encode()
        forms[f"{name}, JSON-escaped"] = json.dumps(body)[1:-1].encode()
    unique: dict[bytes, str] = {}
    for name, form in forms.items():
        unique.setdefault(form, name)
    return {name: form for form, name in unique.items()}


# ---------------------------------------------------------------- the set of secrets and the search


@dataclass(frozen=True, order=True)
class Finding:
    """A secret found: where (file or label, line), how it was written and which secret (by label, never its
    value)."""

    source: str
    line: int
    encoding: str
    secret: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.secret}, written as {self.encoding}"


class SecretSet:
    """Secrets to look for, each with a label (where it came from). Thread-safe to add to."""

    def __init__(self, *, min_bytes: int = MIN_SECRET_BYTES) -> None:
        self.min_bytes = min_bytes
        self._labels: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._index: tuple[int, int, dict[bytes, Any], list[tuple[bytes, str, bytes]]] | None = None

    def add(self, secret: bytes, label: str) -> None:
        """Look for ``secret`` (ignored when shorter than ``min_bytes``); the first label given is kept."""
        value = bytes(secret)
        if len(value) < self.min_bytes:
            return
        with self._lock:
            if value not in self._labels:
                tag = hashlib.sha256(value).hexdigest()[:8]  # tells secrets apart in messages, reveals nothing
                self._labels[value] = f"{label} [sha256 {tag}]"
                self._index = None

    def update(self, secrets: Iterable[tuple[bytes, str]]) -> None:
        for secret, label in secrets:
            self.add(secret, label)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, secret: object) -> bool:
        return isinstance(secret, bytes | bytearray) and bytes(secret) in self._labels

    def _built_index(self) -> tuple[int, dict[bytes, Any], list[tuple[bytes, str, bytes]]]:
        """Every ``m``-byte slice (at every offset) of every form -> (form number << 16 | offset): a form of
        ``2m - 1`` bytes or more holds an ``m``-slice starting at a multiple of ``m`` wherever it lies in a blob,
        so a blob is searched with one dictionary look-up every ``m`` bytes."""
        with self._lock:
            if self._index is not None and self._index[0] == len(self._labels):
                _, m, grams, forms = self._index
                return m, grams, forms
            labels = dict(self._labels)
        forms = [(form, name, secret) for secret in labels for name, form in encodings(secret).items()]
        shortest = min((len(f) for f, _, _ in forms), default=16)
        m = max(1, min(8, (shortest + 1) // 2))
        grams: dict[bytes, Any] = {}
        for number, (form, _, _) in enumerate(forms):
            for offset in range(len(form) - m + 1):
                gram, entry = form[offset:offset + m], number << 16 | offset
                held = grams.get(gram)
                if held is None:
                    grams[gram] = entry
                elif isinstance(held, list):
                    held.append(entry)
                elif held != entry:
                    grams[gram] = [held, entry]
        with self._lock:
            self._index = (len(labels), m, grams, forms)
        return m, grams, forms

    def scan_bytes(self, data: bytes, source: str) -> list[Finding]:
        """Every place a secret of this set is in ``data`` (one finding per line, encoding and secret)."""
        if not self._labels or not data:
            return []
        m, grams, forms = self._built_index()
        labels = self._labels
        found: set[Finding] = set()
        get = grams.get
        for pos in range(0, len(data) - m + 1, m):
            held = get(data[pos:pos + m])
            if held is None:
                continue
            for entry in held if isinstance(held, list) else (held,):
                form, name, secret = forms[entry >> 16]
                start = pos - (entry & 0xFFFF)
                if start >= 0 and data.startswith(form, start):
                    found.add(Finding(source, data.count(b"\n", 0, start) + 1, name, labels[secret]))
        return sorted(found)

    def scan_text(self, text: str, source: str) -> list[Finding]:
        return self.scan_bytes(text.encode("utf-8", "surrogateescape"), source)

    def scan_file(self, path: Path) -> list[Finding]:
        return self.scan_bytes(path.read_bytes(), str(path))


def describe(findings: list[Finding], *, limit: int = 50) -> str:
    """The findings as lines (the first ``limit``), for a failure message; no secret in it."""
    lines = [f"  {f}" for f in findings[:limit]]
    if len(findings) > limit:
        lines.append(f"  ... and {len(findings) - limit} more")
    return "\n".join(lines)


# ---------------------------------------------------------------- keys kept on disk


def manufacturing_keys(path: Path) -> list[tuple[bytes, str]] | None:
    """The keys of a manufacturing file (``scratch factory provision``: CSV or JSON rows with a ``psk_key`` column
    in hex), with labels; None when ``path`` is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    rows: list[Any]
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(rows, list):
            return None
    else:
        first = stripped.partition("\n")[0]
        if "psk_key" not in first.split(","):
            return None
        rows = list(csv.DictReader(io.StringIO(stripped)))
    keys = []
    for row in rows:
        if not isinstance(row, dict) or "psk_key" not in row:
            return None
        with contextlib.suppress(TypeError, ValueError):
            keys.append((bytes.fromhex(row["psk_key"]), f"PSK of {row.get('endpoint')!r} in manufacturing file "
                                                         f"{path}"))
    return keys or None


def vault_key_file(folder: Path, top: Path) -> Path | None:
    """The vault key of a data folder as the tests lay it out: ``folder/vault.key`` (a legacy layout, or a test
    that names it), else the ``.config/scratch/vault.key`` of the nearest folder between ``folder`` and ``top`` (the
    per-test ``XDG_CONFIG_HOME`` that tests/conftest.py sets: lwm2m_server.data_dir.vault_key_location), else the
    run-wide one of module- and session-scoped fixtures."""
    if (folder / VAULT_KEY_FILE).is_file():
        return folder / VAULT_KEY_FILE
    for parent in (folder, *folder.parents):
        candidate = parent / ".config" / "scratch" / VAULT_KEY_FILE
        if candidate.is_file():
            return candidate
        if parent == top or top not in parent.parents:
            break
    shared = sorted(top.glob("session-config*/scratch/" + VAULT_KEY_FILE))  # tests/conftest.py, module fixtures
    return shared[0] if shared else None


def data_dir_keys(folder: Path, top: Path | None = None) -> tuple[list[tuple[bytes, str]], str | None]:
    """The PSKs of the active credentials of a data folder (``scratch.db`` + ``vault.key``), opened as the server
    would open them; and why some could not be read (None when all were)."""
    from sqlalchemy import create_engine

    from bootstrap.sql_credentials import SqlCredentialStore
    from bootstrap.vault import Vault
    from lwm2m_server.core.errors import Lwm2mError

    db = folder / DB_FILENAME
    try:  # only folders whose database has the credential table (the store would create it otherwise)
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'credential'").fetchone() \
                    is None:
                return [], None
    except sqlite3.Error as e:
        return [], f"{db}: {e}"
    engine = create_engine(f"sqlite:///{db}")
    keys, problems = [], []
    shared = False
    try:
        key_file = vault_key_file(folder, folder.parent if top is None else top)
        if key_file is None:
            return [], f"{folder}: no vault key file found"
        shared = ".config" not in key_file.parts and key_file.parent != folder  # the run-wide fallback
        store = SqlCredentialStore(engine, Vault.open(key_file, environ={}))
        for credential in store.list(tenant_id=None):
            try:
                psk = store.psk_for(credential.identity)
            except Lwm2mError as e:
                problems.append(f"{credential.identity}: {type(e).__name__}")
                continue
            if psk is not None:
                keys.append((bytes(psk), f"{credential.kind.value} PSK of {credential.endpoint!r} in the credential "
                                         f"store of {folder}"))
    except Lwm2mError as e:
        problems.append(f"{type(e).__name__}: {e}")
    except Exception as e:  # a folder a test left broken on purpose must not stop the scan
        problems.append(type(e).__name__)
    finally:
        engine.dispose()
    if problems and not keys and shared:  # the folder's key is not the run-wide one (e.g. $SCRATCH_VAULT_KEY)
        return [], None
    return keys, (f"{folder}: " + "; ".join(problems[:3])) if problems else None


# ---------------------------------------------------------------- recording the keys a run draws


class RecordingSecrets:
    """Stands in for the :mod:`secrets` module in one module: ``token_bytes`` records what it returns (with the
    running test's name); everything else is the real module's."""

    def __init__(self, real: ModuleType, record: Callable[[bytes, str], None], what: str) -> None:
        self._real = real
        self._record = record
        self._what = what

    def token_bytes(self, nbytes: int | None = None) -> bytes:
        value = self._real.token_bytes(nbytes)
        self._record(value, f"{self._what} ({len(value)} bytes) drawn during {_current_test()}")
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "collection or session setup")


@contextlib.contextmanager
def recording_keys(found: SecretSet) -> Iterator[None]:
    """While open: every PSK drawn by or handed to a credential store, every KEK drawn by the vault, every webhook
    secret and every API token secret drawn is added to ``found``."""
    import bootstrap.credentials as credentials
    import bootstrap.vault as vault
    import lwm2m_server.fota.webhooks as webhooks
    import lwm2m_server.tenancy.tokens as api_tokens

    base = credentials.CredentialStoreBase
    originals = {name: base.__dict__[name] for name in ("issue", "replace")}
    modules = {credentials: credentials.secrets, vault: vault.secrets, webhooks: webhooks.secrets,
               api_tokens: api_tokens.secrets}

    def recorder(method: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            issued = method(self, *args, **kwargs)
            found.add(bytes(issued.psk), f"PSK handed back by {name}() during {_current_test()}")
            return issued

        return wrapper

    credentials.secrets = RecordingSecrets(real_secrets, found.add, "PSK (bootstrap.credentials)")
    vault.secrets = RecordingSecrets(real_secrets, found.add, "vault KEK (bootstrap.vault)")
    webhooks.secrets = RecordingSecrets(real_secrets, found.add, "webhook secret (lwm2m_server.fota.webhooks)")
    api_tokens.secrets = RecordingSecrets(real_secrets, found.add, "API token secret (lwm2m_server.tenancy.tokens)")
    for name, method in originals.items():
        setattr(base, name, recorder(method, name))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(base, name, method)
        for module, original in modules.items():
            module.secrets = original  # type: ignore[attr-defined]


# ---------------------------------------------------------------- capturing the logs


class _ProjectDebugOthersInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or record.name.partition(".")[0] in PROJECT_LOGGERS


CHILD_SITECUSTOMIZE = f'''\
"""Written by tests/secret_scan.py for one test run: copies every log record this Python process emits (at its
own levels) and any uncaught traceback into {CHILD_LOG_DIR_ENV}/subprocess-PID.log, for the leak scan."""
import os as _os

_dir = _os.environ.get("{CHILD_LOG_DIR_ENV}")
if _dir:
    import logging as _logging
    import sys as _sys
    import traceback as _traceback

    _formatter = _logging.Formatter({LOG_FORMAT!r})
    _fd = []

    def _write(text):
        try:
            if not _fd:
                _fd.append(_os.open(_os.path.join(_dir, "subprocess-%d.log" % _os.getpid()),
                                    _os.O_WRONLY | _os.O_CREAT | _os.O_APPEND, 0o600))
            _os.write(_fd[0], text.encode("utf-8", "backslashreplace"))
        except Exception:
            pass

    _call_handlers = _logging.Logger.callHandlers

    def _copying_call_handlers(self, record):
        try:
            line = _formatter.format(record)
        except Exception as e:
            line = "unformattable record from %s: %r" % (record.name, e)
        _write(line + "\\n")
        _call_handlers(self, record)

    _logging.Logger.callHandlers = _copying_call_handlers
    _excepthook = _sys.excepthook

    def _copying_excepthook(kind, value, tb):
        _write("".join(_traceback.format_exception(kind, value, tb)))
        _excepthook(kind, value, tb)

    _sys.excepthook = _copying_excepthook
'''


@contextlib.contextmanager
def capturing_logs(log_file: Path, child_dir: Path) -> Iterator[None]:
    """While open: log records go (also) to ``log_file`` (project loggers from DEBUG, others from INFO), and child
    Python processes started with this process's environment copy theirs into ``child_dir``."""
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_ProjectDebugOthersInfo())
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *PROJECT_LOGGERS)}
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)

    (child_dir / "sitecustomize.py").write_text(CHILD_SITECUSTOMIZE)
    saved_env = {k: os.environ.get(k) for k in ("PYTHONPATH", CHILD_LOG_DIR_ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(child_dir), saved_env["PYTHONPATH"]) if p)
    os.environ[CHILD_LOG_DIR_ENV] = str(child_dir)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        root.removeHandler(handler)
        handler.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# ---------------------------------------------------------------- the suite-wide scan


@dataclass
class ScanReport:
    findings: list[Finding] = field(default_factory=list)
    secrets: int = 0
    files: int = 0
    scanned_bytes: int = 0
    data_dirs: int = 0
    manufacturing_files: int = 0
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        verdict = f"{len(self.findings)} LEAK(S)" if self.findings else "no secret found"
        text = (f"secret scan: {self.secrets} secrets (incl. {self.data_dirs} data folder(s), "
                f"{self.manufacturing_files} manufacturing file(s)) looked for in {self.files} file(s), "
                f"{self.scanned_bytes / 1e6:.1f} MB in {self.seconds:.1f} s: {verdict}")
        if self.unreadable:
            text += f"; {len(self.unreadable)} data folder(s) not readable (e.g. {self.unreadable[0]})"
        return text


class SuiteSecretScan:
    """The whole-run check: capture logs and record keys between :meth:`start` and :meth:`finish`, then scan."""

    def __init__(self, basetemp: Path, workdir: Path) -> None:
        self.basetemp = basetemp
        self.workdir = workdir
        self.log_file = workdir / "suite.log"
        self.secrets = SecretSet()
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        self._stack.enter_context(recording_keys(self.secrets))
        self._stack.enter_context(capturing_logs(self.log_file, self.workdir))

    def finish(self) -> ScanReport:
        self._stack.close()
        started = time.perf_counter()
        report = ScanReport()
        candidates: list[Path] = []
        for path in sorted(self.basetemp.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            if path.name == DB_FILENAME and vault_key_file(path.parent, self.basetemp) is not None:
                keys, problem = data_dir_keys(path.parent, self.basetemp)
                self.secrets.update(keys)
                report.data_dirs += 1
                if problem:
                    report.unreadable.append(problem)
            elif path.suffix in MANUFACTURING_SUFFIXES + SCANNED_SUFFIXES:
                if path.stat().st_size > MAX_SCANNED_FILE_BYTES:
                    report.unreadable.append(f"{path}: too big to scan")
                    continue
                keys_of_file = manufacturing_keys(path)
                if keys_of_file is not None:  # its keys are there on purpose (mode 0600): learnt, not scanned
                    self.secrets.update(keys_of_file)
                    report.manufacturing_files += 1
                elif path.suffix in SCANNED_SUFFIXES:
                    candidates.append(path)
        report.secrets = len(self.secrets)
        for path in candidates:
            data = path.read_bytes()
            report.files += 1
            report.scanned_bytes += len(data)
            report.findings.extend(self.secrets.scan_bytes(data, str(path)))
        report.seconds = time.perf_counter() - started
        return report
