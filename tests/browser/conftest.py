"""Browser tests of the web interface: a real server (in a thread of its own: Selenium's calls block) with two
tenants, their web users and devices, and Debian's headless chromium driven by Selenium.

* ``web``: the server at ``web.url``; the tenant :data:`HOME` (the embedded default) and ``op-b``; users ``alice``
  (HOME: operator and release manager), ``audrey`` (HOME: auditor), ``bob`` (op-b: operator), each with password
  :data:`PASSWORD`; HOME's release key ``release`` exists and its simulated devices (``dev-0``..``dev-4``, or as
  many as a test's ``@pytest.mark.devices(n)`` says) trust it. The devices speak plain CoAP (which registers in the
  default tenant): the web interface is what these tests show; tenants over DTLS are shown by
  tests/integration/test_tenancy_api.py and tests/cli/test_two_company_flow.py.
* ``browser``: a headless chromium at 1280x900; :func:`phone` and :func:`desktop` resize it.
* :func:`screenshot` writes ``<name>.png`` to ``$SCRATCH_SCREENSHOTS`` (``./dev screens``: docs/web) or tmp_path.

Waits are explicit and bounded (:func:`wait`); nothing sleeps to make an assertion true. The tests are skipped,
with the reason, only when /usr/bin/chromium or /usr/bin/chromedriver is missing (``./dev setup`` installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.suit.keys import load_public_key
from lwm2m_server.fota.releases import class_uuid, vendor_uuid
from lwm2m_server.server import Lwm2mServer
from lwm2m_server.storage.database import Database
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import system_principal
from tests.harness import eventually, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT = 20.0  # seconds: the bound of every wait for the page
PASSWORD = "correct horse battery staple"
VENDOR, CLASS_NAME = "acme.example", "meter"
HOME = "default"  # alice's and audrey's tenant, where plain-CoAP devices register
USERS = {  # login -> (tenant, roles)
    "alice": (HOME, frozenset({Role.OPERATOR, Role.RELEASE_MANAGER})),
    "audrey": (HOME, frozenset({Role.AUDITOR})),
    "adele": (HOME, frozenset({Role.ADMIN})),
    "bob": ("op-b", frozenset({Role.OPERATOR})),
}
DEFAULT_DEVICES = 5
T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "devices(n): how many simulated devices of HOME the `web` fixture registers")


class Web:
    """The running server of one test, driven from the test's thread: :meth:`call` runs a function, :meth:`run` a
    coroutine, on the server's event loop (its stores and services are used there only)."""

    def __init__(self, data: Path, devices: int) -> None:
        self.data, self.devices = data, devices
        self.srv: Lwm2mServer
        self.store: SqlCredentialStore
        self.url = ""
        self.endpoints: list[str] = []
        self.anchor: Any = None
        self._fleets: list[Fleet] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="web-server", daemon=True)

    # ------------------------------------------------------------------ lifecycle (the server's thread)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(120):
            raise AssertionError("the server and its devices did not start within 120 s")
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the server did not stop within 60 s"
        if self._failure is not None and self._ready.is_set():
            raise self._failure

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            self._failure = e
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.data.mkdir(mode=0o700)
        vault = Vault.open(self.data / "vault.key")
        database = Database.for_data_dir(self.data)
        self.store = SqlCredentialStore(database, vault)
        try:
            async with running_server(self.data, coaps_port=0, coap_port=0, api_port=0, credentials=self.store,
                                      vault=vault, campaign_tick=0.2, request_timeout=20.0,
                                      campaign_job_timeout=60.0) as srv:
                self.srv, self.url = srv, srv.api_url.rstrip("/")
                try:
                    self._tenants()
                    self.endpoints = await self.add_devices("dev-", self.devices)
                    self._ready.set()
                    await self._stop.wait()
                finally:
                    for fleet in self._fleets:
                        await fleet.stop(deregister=False)
        finally:
            database.close()

    def _tenants(self) -> None:
        tenancy, campaigns = self.srv.tenancy, self.srv.campaigns
        assert tenancy is not None and campaigns is not None
        root = system_principal("browser-test")
        tenancy.create_tenant("op-b", kind=TenantKind.OPERATOR, by=root)
        for login, (tenant, roles) in USERS.items():
            tenancy.create_user(tenant_id=tenant, login=login, roles=roles, password=PASSWORD, by=root)
        key = campaigns.keys.get_or_create("release", "release", tenant_id=HOME, now=time.time())
        pem = key.public_pem
        self.anchor = load_public_key(pem.encode() if isinstance(pem, str) else pem)

    async def add_devices(self, prefix: str, count: int, components: Any = None) -> list[str]:
        """Start (on the server's loop) ``count`` plain-CoAP devices of HOME named ``<prefix><i>``, at version
        1.0.0, trusting HOME's release key (with ``components``: a system of them, see client_sim.components);
        return their endpoints once every one is registered."""
        endpoints = [f"{prefix}{i}" for i in range(count)]
        vendor = vendor_uuid(VENDOR)
        firmware = FirmwareOptions(trust_anchors=(self.anchor,), vendor_id=vendor,
                                   class_id=class_uuid(vendor, CLASS_NAME), version="1.0.0", components=components)
        fleet = Fleet(self.srv.coap_uri, count, prefix=prefix, lifetime=600, concurrency=10, drift_interval=0,
                      firmware=firmware)
        self._fleets.append(fleet)
        await fleet.start(timeout_per_device=30)
        await eventually(lambda: fleet.status.registered == count, timeout=60)
        return endpoints

    # ------------------------------------------------------------------ from the test's thread

    def run(self, coro: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
        """Run ``coro()`` on the server's loop and return its result."""
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(_call(coro), self._loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn()`` on the server's loop (the thread that owns the services) and return its result."""

        async def in_loop() -> T:
            return fn()

        return self.run(in_loop, timeout)

    def http(self, driver: Any) -> httpx.Client:
        """An HTTP client with the browser's cookies (sent as a header: a Secure cookie over http://127.0.0.1 is
        the browser's business; the jar of ``http.cookiejar`` would keep it back)."""
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
        return httpx.Client(base_url=self.url, headers={"Cookie": cookie} if cookie else {}, timeout=30,
                            follow_redirects=False)


async def _call(coro: Callable[[], Awaitable[T]]) -> T:
    return await coro()


@pytest.fixture
def web(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Web]:
    marker = request.node.get_closest_marker("devices")
    world = Web(tmp_path / "data", marker.args[0] if marker is not None else DEFAULT_DEVICES)
    try:
        world.start()
        yield world
    finally:
        world.stop()


# ---------------------------------------------------------------------- the browser


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
                    "`./dev setup` installs them")


@contextlib.contextmanager
def _chromium() -> Iterator[Any]:
    """A headless Debian chromium at desktop size, driven by Selenium; quit on exit."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    try:
        desktop(driver)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser() -> Iterator[Any]:
    with _chromium() as driver:
        yield driver


@pytest.fixture
def second_browser() -> Iterator[Any]:
    """Another, independent browser (its own cookies): a second user at the same time."""
    with _chromium() as driver:
        yield driver


def desktop(driver: Any) -> None:
    driver.set_window_size(*DESKTOP)


def phone(driver: Any) -> None:
    driver.set_window_size(*PHONE)


@contextlib.contextmanager
def phone_size(driver: Any) -> Iterator[None]:
    phone(driver)
    try:
        yield
    finally:
        desktop(driver)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: ``$SCRATCH_SCREENSHOTS`` when set (the docs), else the test's own folder."""
    folder = Path(os.environ["SCRATCH_SCREENSHOTS"]) if os.environ.get("SCRATCH_SCREENSHOTS") else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver: Any, folder: Path, name: str, *, both: bool = True) -> list[Path]:
    """``<name>-desktop.png`` and (``both``) ``<name>-phone.png`` of the current page, full height of the viewport."""
    written = []
    sizes = (("desktop", DESKTOP), ("phone", PHONE)) if both else (("desktop", DESKTOP),)
    try:
        for label, size in sizes:
            driver.set_window_size(*size)
            wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
            path = folder / f"{name}-{label}.png"
            assert driver.save_screenshot(str(path)), path
            written.append(path)
    finally:
        desktop(driver)
    return written


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = WAIT, message: str = "") -> Any:
    """``WebDriverWait(driver, timeout).until(condition)``: the condition's first truthy value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)
