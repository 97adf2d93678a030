"""SCRATCh LwM2M server.

This package face stays light: importing it pulls in nothing heavy (no database, web stack or CLI), so that
client_sim and bootstrap can use :mod:`lwm2m_server.core` cheaply.
"""

__version__ = "0.1.0"
