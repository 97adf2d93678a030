"""The management REST API (FastAPI), served on loopback by ``scratch server`` and used by the CLI."""
