"""Shared fixtures. Reference data (OMA XML, SUIT and COSE vectors) is read from ../shared/reference, beside the
repository, never copied into it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.secret_scan import SuiteSecretScan, describe

pytest_plugins = ["tests.postgres_server"]  # the `postgres` fixture: a throwaway PostgreSQL server

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("SCRATCH_REFERENCE", REPO.parent / "shared" / "reference"))
_SECRET_SCAN_SUMMARY = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def reference() -> Path:
    """The reference-data folder; tests that need it are skipped, with the reason, when it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (set SCRATCH_REFERENCE)")
    return REFERENCE


@pytest.fixture(autouse=True, scope="session")
def vault_key_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for module- and session-scoped fixtures, which start before any test's own folder exists: the
    whole run's default vault key location is in the run's base temporary folder."""
    saved = {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "SCRATCH_VAULT_KEY_FILE")}
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("session-config"))
    os.environ.pop("SCRATCH_VAULT_KEY_FILE", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def vault_key_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every ``scratch`` process it starts, which inherits the environment) finds the default vault
    key location (``$XDG_CONFIG_HOME/scratch/vault.key``) in its own temporary folder, never in the real home;
    a ``$SCRATCH_VAULT_KEY_FILE`` of the developer's shell is ignored. Nothing is created until a key is."""
    config = tmp_path / ".config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("SCRATCH_VAULT_KEY_FILE", raising=False)
    return config / "scratch" / "vault.key"


# ---------------------------------------------------------------- rule 6: no secret in any log of the run


@pytest.fixture(scope="session", autouse=True)
def secrets_never_leak(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[SuiteSecretScan]:
    """For the whole run: every log record goes into a file (project loggers from DEBUG, others from INFO; child
    ``scratch`` processes copy theirs), every PSK drawn or issued is recorded; at the end the logs and every
    .log/.txt/.jsonl/.out/.err file under pytest's base temporary folder are scanned for every recorded key, in
    every encoding (tests/secret_scan.py). A key found fails the run, naming file, line and encoding, never the key.

    This teardown runs as the last test's teardown, before pytest's own session end (where temporary folders
    may be cleaned up), so every test's folder is still there."""
    scan = SuiteSecretScan(tmp_path_factory.getbasetemp(), tmp_path_factory.mktemp("secret-scan", numbered=False))
    scan.start()
    try:
        yield scan
    finally:
        report = scan.finish()
    request.config.stash[_SECRET_SCAN_SUMMARY] = report.summary()
    if report.findings:
        pytest.fail(f"rule 6 (secrets never leak): {len(report.findings)} recorded secret(s) found where they must "
                    f"never be:\n{describe(report.findings)}\n(full run log: {scan.log_file})", pytrace=False)


_SLOW_LEFT_OUT = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="run only the slow scale tests (marked 'slow'), which a plain run leaves out and names")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A plain run deselects the tests marked ``slow`` (and says so in its summary); ``--slow`` runs only them."""
    only_slow = config.getoption("--slow")
    keep = [i for i in items if (i.get_closest_marker("slow") is not None) == only_slow]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    if not only_slow:
        config.stash[_SLOW_LEFT_OUT] = len(dropped)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summary = terminalreporter.config.stash.get(_SECRET_SCAN_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_line(summary)
    left_out = terminalreporter.config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow scale test(s) deselected, not skipped: `./dev test --slow` "
                                    "runs them")
