"""docs/tenants.md's role table is the code's: every action, every role's "yes", every kind restriction."""

from __future__ import annotations

from pathlib import Path

from lwm2m_server.tenancy.model import KIND_ACTIONS, PERMISSIONS, Action, Role, TenantKind

DOC = Path(__file__).resolve().parents[2] / "docs" / "tenants.md"


def test_the_documented_role_table_is_the_permission_table() -> None:
    text = DOC.read_text()
    table = text.split("<!-- role-table:begin -->")[1].split("<!-- role-table:end -->")[0].strip().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["Action", *[r.value for r in Role], "not for kind"]
    documented: dict[Action, tuple[set[Role], set[TenantKind]]] = {}
    for row in table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        action = Action(cells[0].split(":")[0])
        roles = {r for r, cell in zip(Role, cells[1:5], strict=True) if cell == "yes"}
        kinds = {TenantKind(k.strip()) for k in cells[5].split(",") if k.strip()}
        documented[action] = (roles, kinds)
    assert set(documented) == set(Action)
    for action, (roles, kinds) in documented.items():
        assert roles == {r for r in Role if action in PERMISSIONS[r]}, action
        assert kinds == {k for k in TenantKind if action not in KIND_ACTIONS[k]}, action
