"""The sans-I/O LwM2M kernel shared by the server, the bootstrap server and the simulated devices.

Nothing here opens a socket, a file or a database, imports asyncio or reads the clock: time comes in as ``now``.
"""
