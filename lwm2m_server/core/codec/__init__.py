"""Content formats: one module per format, and :mod:`.registry`, which dispatches by content format."""
