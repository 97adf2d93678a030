"""Usage metering (per tenant, per day, hash-chained): the pure core (:mod:`.usage`), the stores (:mod:`.store`)
and the event-bus shell (:mod:`.meter`). Importing this package imports nothing heavy."""
