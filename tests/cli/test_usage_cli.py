"""``scratch usage export`` and ``verify`` through typer's CliRunner on a real SQLite data directory: the finished
days are sealed and exported (CSV and JSON), a file verifies on its own, one edited cell fails verification with
exit 1 naming its day; bad input exits 2 with one line on stderr and no traceback."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner, Result

from lwm2m_server.cli.usage import usage_app
from lwm2m_server.metering.store import SqlUsageStore
from lwm2m_server.metering.usage import DayCounts
from lwm2m_server.storage.database import Database

DAYS = ("2024-01-30", "2024-01-31", "2024-02-02")  # 2024-02-01 is quiet: sealed as a zero day


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    with Database.for_data_dir(folder) as db:
        store = SqlUsageStore(db)
        for i, day in enumerate(DAYS):
            store.add(DayCounts(deliveries_started=2, deliveries_succeeded=1, deliveries_failed=1,
                                bytes_delivered=1000 * (i + 1), campaigns_started=1), tenant_id="op", day=day)
            store.add(DayCounts(), tenant_id="op", day=day, endpoint="dev-1")
        store.add(DayCounts(campaigns_started=1), tenant_id="other", day=DAYS[0])
    return folder


def usage(*args: str) -> Result:
    return CliRunner().invoke(usage_app, list(args), env={"COLUMNS": "200"})


def ok(r: Result) -> Result:
    assert r.exit_code == 0, f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}\n{r.exception!r}"
    return r


def bad(r: Result, needle: str, code: int) -> None:
    shown = f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
    assert r.exit_code == code, shown
    assert needle in r.stderr, shown
    assert len(r.stderr.strip().splitlines()) == 1, shown
    assert "Traceback" not in r.stdout + r.stderr, shown


def head_of(data: Path) -> str:
    with Database.for_data_dir(data) as db:
        return SqlUsageStore(db).days(tenant_id="op")[-1].hash


def test_export_then_verify_and_an_edited_cell_fails(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "usage.csv"
    r = ok(usage("export", "--tenant", "op", "--out", str(out), "--data-dir", str(data)))
    head = head_of(data)
    assert r.stdout.strip() == (
        f"exported 4 days of tenant op (2024-01-30..2024-02-02) to {out} (csv): 3 device registrations (distinct "
        "per day), 6 deliveries started, 3 succeeded, 3 failed, 6000 bytes, 3 campaigns started, 0 finished; "
        f"head {head[:16]}")
    assert ok(usage("verify", str(out))).stdout.strip() == f"OK: 4 days, head {head[:16]}"

    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["day"] for row in rows] == ["2024-01-30", "2024-01-31", "2024-02-01", "2024-02-02"]
    rows[1]["bytes_delivered"] = "1"  # one cell
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    bad(usage("verify", str(edited)), "does not verify: 2024-01-31 (record 2): record edited", 1)

    del rows[2]  # a quiet day removed (with the edit undone)
    rows[1]["bytes_delivered"] = "2000"
    with edited.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    bad(usage("verify", str(edited)), "2024-02-02 (record 3): day(s) missing between 2024-01-31 and 2024-02-02", 1)


def test_json_export_a_range_and_an_edit(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "usage.json"  # the format follows the suffix
    r = ok(usage("export", "--tenant", "op", "--from", "2024-01-31", "--to", "2024-02-01", "--out", str(out),
                 "--data-dir", str(data)))
    assert "exported 2 days of tenant op (2024-01-31..2024-02-01)" in r.stdout
    doc = json.loads(out.read_text())
    assert (doc["tenant"], doc["from"], doc["to"], doc["days"]) == ("op", "2024-01-31", "2024-02-01", 2)
    assert ok(usage("verify", str(out))).stdout.startswith("OK: 2 days, head ")
    doc["records"][0]["deliveries_succeeded"] = 2
    out.write_text(json.dumps(doc))
    bad(usage("verify", str(out)), "2024-01-31 (record 1): record edited", 1)
    doc["records"][0]["deliveries_succeeded"] = 1
    doc["records"].pop()
    out.write_text(json.dumps(doc))
    bad(usage("verify", str(out)), "header: to says 2024-02-01", 1)

    other = tmp_path / "other.txt"
    ok(usage("export", "--tenant", "other", "--format", "JSON", "--out", str(other), "--data-dir", str(data)))
    assert json.loads(other.read_text())["days"] == 1
    nobody = tmp_path / "nobody.csv"
    assert "exported 0 days" in ok(usage("export", "--tenant", "nobody", "--out", str(nobody),
                                         "--data-dir", str(data))).stdout
    assert ok(usage("verify", str(nobody))).stdout.strip() == "OK: 0 days, head -"


def test_an_edited_database_is_not_exported(data: Path, tmp_path: Path) -> None:
    ok(usage("export", "--tenant", "op", "--out", str(tmp_path / "a.csv"), "--data-dir", str(data)))
    with Database.for_data_dir(data) as db, db.engine.begin() as c:
        c.execute(text("UPDATE usage_day SET deliveries_failed = 0 WHERE tenant_id = 'op' AND day = '2024-02-02'"))
    out = tmp_path / "b.csv"
    bad(usage("export", "--tenant", "op", "--out", str(out), "--data-dir", str(data)),
        "the stored usage of tenant op does not verify (nothing written): 2024-02-02 (record 4): record edited", 1)
    assert not out.exists()


def test_bad_input_is_one_line(data: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.csv")
    bad(usage("export", "--tenant", "op", "--from", "2024-13-01", "--out", out, "--data-dir", str(data)),
        "--from: not a date YYYY-MM-DD: '2024-13-01'", 2)
    bad(usage("export", "--tenant", "op", "--from", "2024-02-02", "--to", "2024-02-01", "--out", out,
              "--data-dir", str(data)), "--from 2024-02-02 is after --to 2024-02-01", 2)
    bad(usage("export", "--tenant", "op", "--format", "xml", "--out", out, "--data-dir", str(data)),
        "--format: 'xml' is not csv or json", 2)
    bad(usage("verify", str(tmp_path / "absent.csv")), "cannot read", 2)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("tenant_id,day\nop,2024-01-01\n")
    bad(usage("verify", str(garbage)), "not a well-formed usage file: line 1: not a usage CSV header", 1)
