"""aiocoap shell: contexts, the server's CoAP resources (/rd), error-to-response mapping, downlink requests."""
