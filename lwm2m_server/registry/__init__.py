"""The registration service: register/update/deregister, lifetime expiry and write-behind persistence
(:mod:`.service`). The package face imports nothing."""
