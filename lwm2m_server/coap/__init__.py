"""CoAP and DTLS transport pieces shared by the server, the bootstrap server and the simulated devices: UDP contexts
(:mod:`.udp`), DTLS-PSK over tinydtls (:mod:`.dtls`), datagram screening (:mod:`.datagrams`), the one
error-to-response mapping (:mod:`.responses`) and remote addresses (:mod:`.remotes`).

Invariant: nothing here imports the server's registry, storage, services or web stack, so client_sim and bootstrap
can use it without them.
"""
