"""The web interface: server-rendered pages (Jinja2) under ``/ui`` on the API's port, live over Server-Sent Events,
signed in with the tenant users of :mod:`lwm2m_server.tenancy` (see docs/web.md)."""
