"""Tenants, their principals and what each role may do: the multi-stakeholder room (see docs/tenants.md)."""
