"""Simulated constrained LwM2M devices on aiocoap: the object tree (objects), one device (device), a fleet
(fleet) and the ``scratch sim`` command (cli). Imports only lwm2m_server.core, never storage, api or cli."""
