"""A small client of the management API for the CLI commands.

The server is found from ``--api URL`` or ``SCRATCH_API``, else from the ``api-url`` file the running server
writes into its data directory (``--data-dir`` or ``SCRATCH_DATA_DIR``). The token comes from ``scratch --token``,
else ``SCRATCH_TOKEN`` (or the older ``SCRATCH_API_TOKEN``), else the data directory's ``api-token`` file (the embedded
default's local admin token); it is never printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from lwm2m_server.data_dir import API_URL_FILE, TOKEN_FILE, default_data_dir

TOKEN_ENV = ("SCRATCH_TOKEN", "SCRATCH_API_TOKEN")
token_override: str | None = None  # set by ``scratch --token``


class CliError(Exception):
    """An error for the user: printed as one line, and the command exits non-zero."""


class ApiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx.Timeout(timeout, connect=5.0))

    @classmethod
    def locate(cls, api: str | None, data_dir: Path | None, *, timeout: float = 60.0) -> ApiClient:
        ddir = data_dir or default_data_dir()
        url = api or os.environ.get("SCRATCH_API")
        if not url:
            try:
                url = (ddir / API_URL_FILE).read_text().strip()
            except FileNotFoundError:
                raise CliError(f"no running server found: {ddir / API_URL_FILE} does not exist "
                               "(start `scratch server`, or give --api URL / SCRATCH_API)") from None
        token = token_override or next((os.environ[v] for v in TOKEN_ENV if os.environ.get(v)), None)
        if not token:
            try:
                token = (ddir / TOKEN_FILE).read_text().strip()
            except FileNotFoundError:
                raise CliError(f"no API token: give --token or SCRATCH_TOKEN (or --data-dir of a server on this "
                               f"machine: {ddir / TOKEN_FILE} does not exist)") from None
            except PermissionError:
                raise CliError(f"cannot read the API token {ddir / TOKEN_FILE}: permission denied") from None
        return cls(url, token, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _check(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                body = r.json()
                msg = body.get("error") or body.get("detail") or r.text
            except ValueError:
                msg = r.text
            if isinstance(msg, list):  # FastAPI validation details
                msg = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" for d in msg)
            raise CliError(str(msg))
        return r.json()

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        try:
            return self._check(self._http.request(method, url, **kw))
        except httpx.TimeoutException:
            raise CliError(f"the server at {self.base_url} did not answer in time") from None
        except httpx.TransportError as e:
            raise CliError(f"cannot reach the server at {self.base_url}: {e}") from None

    def get(self, url: str, **params: Any) -> Any:
        return self._call("GET", url, params={k: v for k, v in params.items() if v is not None})

    def post(self, url: str, body: dict[str, Any], **params: Any) -> Any:
        return self._call("POST", url, json=body, params={k: v for k, v in params.items() if v is not None})

    def post_bytes(self, url: str, data: bytes, **params: Any) -> Any:
        return self._call("POST", url, content=data, headers={"Content-Type": "application/octet-stream"},
                          params={k: v for k, v in params.items() if v is not None})

    def stream_lines(self, url: str, **params: Any) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("GET", url, params={k: v for k, v in params.items() if v is not None},
                                   timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as e:
            raise CliError(f"cannot reach the server at {self.base_url}: {e}") from None
