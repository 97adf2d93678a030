"""Persistence: store interfaces (:mod:`.stores`), in-memory stores (:mod:`.memory`) and SQL stores (:mod:`.sql`,
over :mod:`.tables` and :class:`.database.Database`).

This package face imports nothing: the registry depends on :mod:`.stores` alone, without the database driver.
"""
