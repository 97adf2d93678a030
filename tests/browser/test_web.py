"""The web interface in a real headless browser (Debian's chromium driven by Selenium) against a real server with
DTLS devices in two operator tenants (tests/browser/conftest.py).

Sign-in and sign-out; the dashboard shows the fleet and its events arrive live; the device list and its search; a
release uploaded through the form; a campaign to 20 simulated devices created, started and watched to its end
without a reload, its signed report downloaded and verified; an auditor sees no buttons that change anything and
the routes behind them refuse her; a second tenant sees none of it; a form post without its CSRF token is refused.
Every page is photographed at desktop and phone width (``./dev screens`` writes them to docs/web).
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from firmware_object.campaign import FINAL_CAMPAIGN_STATES
from firmware_object.suit.keys import load_public_key
from lwm2m_server.fota import attestation
from tests.browser.conftest import CLASS_NAME, HOME, PASSWORD, VENDOR, Web, screenshot, wait

pytestmark = pytest.mark.timeout(150)

IMAGE = bytes(range(256)) * 96  # 24 KiB: a pull of 24 blocks per device, long enough to be watched
RUN_CAMPAIGNS_BUTTONS = ("start", "pause", "resume", "cancel")
FINAL_STATES = {s.value for s in FINAL_CAMPAIGN_STATES}


# ---------------------------------------------------------------------- helpers


def path_of(driver: WebDriver) -> str:
    return urlparse(driver.current_url).path.rstrip("/") or "/"


def css(driver: Any, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def present(driver: Any, selector: str) -> bool:
    return bool(driver.find_elements(By.CSS_SELECTOR, selector))


def text_of(driver: WebDriver, selector: str) -> str:
    """The element's text now, or "" while it is absent.

    Found and read in one script, inside one document: finding an element and then asking for its text is two
    commands, and a live update or a form post's navigation in between leaves the first one's node detached (Chrome
    then answers "Node with given id does not belong to the document", not a stale-element error).
    """
    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e === null ? '' : e.innerText;", selector)
    return str(found or "").strip()


def state_of(driver: WebDriver) -> str:
    return text_of(driver, "#state").lower()


def rows(driver: WebDriver, attribute: str) -> set[str]:
    """The ``attribute`` of every ``tr[attribute]`` of the page, read in one script (see ``text_of``)."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(`tr[${arguments[0]}]`), r => r.getAttribute(arguments[0]));",
        attribute)
    return {str(v) for v in found}


def open_page(driver: WebDriver, web: Web, path: str, ready: str) -> None:
    """Go to ``path`` and wait for the element ``ready`` of its contract."""
    driver.get(web.url + path)
    wait(driver, lambda d: present(d, ready), message=f"{path}: no {ready} (at {d_url(driver)})")


def d_url(driver: WebDriver) -> str:
    return str(driver.current_url)


def sign_in(driver: WebDriver, web: Web, login: str, password: str = PASSWORD) -> None:
    open_page(driver, web, "/ui/sign-in", "form#sign-in")
    css(driver, "input#login").send_keys(login)
    css(driver, "input#password").send_keys(password)
    css(driver, "form#sign-in button[type=submit]").click()
    wait(driver, lambda d: path_of(d) == "/ui" and present(d, "#who"), message=f"{login}: not signed in")


def mark_page(driver: WebDriver) -> str:
    """Leave a mark in the page's JavaScript state: a reload (or any navigation) wipes it."""
    mark = f"m{time.monotonic_ns()}"
    driver.execute_script("window.__testMark = arguments[0];", mark)
    return mark


def same_page(driver: WebDriver, mark: str) -> bool:
    return bool(driver.execute_script("return window.__testMark === arguments[0];", mark))


def snapshot(driver: WebDriver) -> dict[str, Any]:
    """The campaign page's live parts, read at one instant."""
    return dict(driver.execute_script("""
        const text = (s) => { const e = document.querySelector(s); return e ? e.innerText : ""; };
        return {counts: text("#counts"), succeeded: text("#counts [data-state=succeeded]"), state: text("#state"),
                report: document.querySelector("a#report-json") !== null};"""))


def form_of(driver: WebDriver, selector: str) -> Any:
    """The form that holds the element ``selector`` (the element itself when it is a form)."""
    element = css(driver, selector)
    return element if element.tag_name == "form" else element.find_element(By.XPATH, "./ancestor::form")


def csrf_of(driver: WebDriver) -> str:
    token = css(driver, "input[name=csrf]").get_attribute("value")
    assert token, "no CSRF token in the page"
    return str(token)


def release(web: Web, version: str = "2.0.0") -> str:
    """A release of HOME signed with its release key (the devices trust it), made through the service."""
    campaigns = web.srv.campaigns
    assert campaigns is not None
    made = web.call(lambda: campaigns.releases.create([("app.bin", IMAGE)], vendor=VENDOR, class_name=CLASS_NAME,
                                                      version=version, tenant_id=HOME, now=time.time()))
    return str(made.id)


def campaign(web: Web, rid: str, targets: list[str]) -> str:
    campaigns = web.srv.campaigns
    assert campaigns is not None
    status = web.run(lambda: campaigns.create([rid], targets=targets, tenant_id=HOME, name="made by the test"))
    return str(status["id"])


def campaign_state(web: Web, cid: str) -> str:
    campaigns = web.srv.campaigns
    assert campaigns is not None
    return str(web.call(lambda: campaigns.status(cid, tenant_id=HOME))["state"])


# ---------------------------------------------------------------------- sign-in


def test_sign_in_wrong_password_then_right_then_sign_out(web: Web, browser: WebDriver, shots: Path) -> None:
    open_page(browser, web, "/ui/sign-in", "form#sign-in")
    form = css(browser, "form#sign-in")
    assert css(browser, "input#login").get_attribute("name") == "login"
    assert css(browser, "input#password").get_attribute("name") == "password"
    assert css(browser, "input#password").get_attribute("type") == "password"
    assert form.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("type") == "hidden"
    assert present(form, "button[type=submit]")
    assert not present(browser, "#who")
    screenshot(browser, shots, "sign-in")

    css(browser, "input#login").send_keys("alice")
    css(browser, "input#password").send_keys("not the password")
    css(browser, "form#sign-in button[type=submit]").click()
    wait(browser, lambda d: present(d, "#error") and css(d, "#error").is_displayed(), message="no #error")
    assert not present(browser, "#who") and path_of(browser) != "/ui"

    sign_in(browser, web, "alice")
    assert text_of(browser, "#product") == "SCRATCh"  # HOME has no brand
    who = text_of(browser, "#who")
    assert "alice" in who and HOME in who, who
    for nav in ("dashboard", "devices", "campaigns", "releases"):
        assert present(browser, f"a#nav-{nav}"), nav
    # operator and release manager: neither reads usage nor the audit trail
    assert not present(browser, "a#nav-usage") and not present(browser, "a#nav-audit")

    form_of(browser, "form#sign-out").find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser, lambda d: present(d, "form#sign-in"), message="sign-out did not lead to the sign-in page")
    browser.get(web.url + "/ui")  # the session is over: back to the sign-in page
    wait(browser, lambda d: present(d, "form#sign-in"), message="/ui after sign-out is not the sign-in page")
    assert not present(browser, "#who")


# ---------------------------------------------------------------------- a device, administration


def test_a_device_page_reads_a_resource_of_the_live_device(web: Web, browser: WebDriver, shots: Path) -> None:
    sign_in(browser, web, "alice")
    open_page(browser, web, "/ui/devices", "table#devices")
    css(browser, 'tr[data-endpoint="dev-1"] a').click()
    wait(browser, lambda d: path_of(d) == "/ui/devices/dev-1" and present(d, "form#read"), message="no device page")
    field = css(browser, "input#path")
    field.clear()
    field.send_keys("/3/0/0")
    field.submit()
    wait(browser, lambda d: '"code": "2.05"' in text_of(d, "#answer"), message="the read did not answer 2.05")
    screenshot(browser, shots, "device")


def test_an_admin_makes_a_token_shown_once_and_sets_the_brand(web: Web, browser: WebDriver, shots: Path) -> None:
    sign_in(browser, web, "adele")
    css(browser, "a#nav-admin").click()
    wait(browser, lambda d: present(d, "form#new-token-form"), message="no admin page")
    form = css(browser, "form#new-token-form")
    css(browser, "input#token-name").send_keys("ci pipeline")
    form.find_element(By.CSS_SELECTOR, 'input[name=roles][value="admin"]').click()
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser, lambda d: text_of(d, "#new-token").startswith("scr_tok-"), message="the token was not shown")
    token = text_of(browser, "#new-token")
    assert web.call(lambda: web.srv.tenancy.authenticate(token)) is not None  # type: ignore[union-attr]
    name = css(browser, "input#brand-name")
    name.clear()
    name.send_keys("Blue Fleet")
    css(browser, "form#brand").find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser, lambda d: text_of(d, "#product") == "Blue Fleet", message="the brand was not applied")
    assert token not in browser.page_source  # shown once: gone on the next page
    screenshot(browser, shots, "admin")


# ---------------------------------------------------------------------- dashboard and devices


def test_dashboard_shows_the_fleet_and_events_arrive_live(web: Web, browser: WebDriver, shots: Path) -> None:
    sign_in(browser, web, "alice")
    assert text_of(browser, "#count-registered") == str(len(web.endpoints))
    charts = all_css(browser, "svg#versions, #versions svg")
    assert charts, "#versions holds no <svg> chart"
    assert present(browser, "#events")
    mark = mark_page(browser)

    late = web.run(lambda: web.add_devices("late-", 1))  # a new device registers while the page is open
    wait(browser, lambda d: late[0] in text_of(d, "#events"), message="the registration never reached #events")
    assert same_page(browser, mark), "the page reloaded: events must arrive live (SSE)"
    screenshot(browser, shots, "dashboard")


def test_device_list_and_search(web: Web, browser: WebDriver, shots: Path) -> None:
    sign_in(browser, web, "alice")
    css(browser, "a#nav-devices").click()
    wait(browser, lambda d: present(d, "table#devices"), message="no table#devices")
    assert path_of(browser) == "/ui/devices"
    assert rows(browser, "data-endpoint") == set(web.endpoints)
    screenshot(browser, shots, "devices")

    search = css(browser, "input#q")
    assert search.find_element(By.XPATH, "./ancestor::form").get_attribute("method").lower() in ("", "get")
    search.send_keys("dev-3")
    search.submit()
    wait(browser, lambda d: rows(d, "data-endpoint") == {"dev-3"}, message="the search did not filter the rows")
    assert "q=dev-3" in d_url(browser)


# ---------------------------------------------------------------------- releases


def test_release_manager_uploads_a_release(web: Web, browser: WebDriver, shots: Path, tmp_path: Path) -> None:
    image = tmp_path / "meter-2.1.0.bin"
    image.write_bytes(IMAGE)
    sign_in(browser, web, "alice")
    css(browser, "a#nav-releases").click()
    wait(browser, lambda d: present(d, "table#releases") and present(d, "form#upload"), message="no releases page")
    assert rows(browser, "data-release") == set()

    css(browser, "input#image").send_keys(str(image))
    css(browser, "input#version").send_keys("2.1.0")
    css(browser, "input#class-name").send_keys(CLASS_NAME)
    css(browser, "input#vendor").send_keys(VENDOR)
    form_of(browser, "form#upload").find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser, lambda d: len(rows(d, "data-release")) == 1, message="no release row after the upload")

    campaigns = web.srv.campaigns
    assert campaigns is not None
    made = web.call(lambda: campaigns.releases.list(tenant_id=HOME))
    assert [(r.version, r.class_name) for r in made] == [("2.1.0", CLASS_NAME)]
    assert rows(browser, "data-release") == {made[0].id}
    row = css(browser, f'tr[data-release="{made[0].id}"]')
    assert "2.1.0" in row.text
    assert web.call(lambda: campaigns.releases.image(made[0].id, tenant_id=HOME)) == IMAGE
    screenshot(browser, shots, "releases")


# ---------------------------------------------------------------------- a campaign watched to its end


@pytest.mark.devices(20)
def test_campaign_to_twenty_devices_watched_live_and_its_report_verified(web: Web, browser: WebDriver,
                                                                         shots: Path) -> None:
    rid = release(web)
    sign_in(browser, web, "alice")
    css(browser, "a#nav-campaigns").click()
    wait(browser, lambda d: present(d, "table#campaigns") and present(d, "form#new-campaign"),
         message="no campaigns page with its form")
    assert rows(browser, "data-campaign") == set()
    Select(css(browser, "select#release")).select_by_value(rid)
    css(browser, "textarea#targets").send_keys("\n".join(web.endpoints))
    if present(browser, "button#preview-targets"):  # the preview: nothing is created, the form keeps its values
        css(browser, "button#preview-targets").click()
        wait(browser, lambda d: present(d, "#preview") and str(len(web.endpoints)) in text_of(d, "#preview"),
             message="no preview of the targets")
        assert rows(browser, "data-campaign") == set()
    form = form_of(browser, "form#new-campaign")
    (form.find_elements(By.CSS_SELECTOR, "button#create") or form.find_elements(By.CSS_SELECTOR, "[type=submit]")
     )[0].click()
    wait(browser, lambda d: re.fullmatch(r"/ui/campaigns/[^/]+", path_of(d)) and present(d, "#state"),
         message="creating did not lead to the campaign's page")
    cid = path_of(browser).rsplit("/", 1)[1]
    created = state_of(browser)
    assert created == campaign_state(web, cid), (created, campaign_state(web, cid))
    assert present(browser, "button#start")

    css(browser, "button#start").click()  # a form post: the page after it is the one watched
    wait(browser, lambda d: state_of(d) not in ("", created), message="the campaign did not start")
    mark = mark_page(browser)
    counts_at_start = str(snapshot(browser)["counts"])
    assert campaign_state(web, cid) not in FINAL_STATES, "the campaign ended before the page could watch it"

    seen: set[str] = {counts_at_start}

    def finished(d: WebDriver) -> bool:
        now = snapshot(d)  # one script: the live update cannot land between the reads
        seen.add(now["counts"])
        return (str(len(web.endpoints)) in re.findall(r"\d+", now["succeeded"])
                and now["state"].strip().lower() in FINAL_STATES and now["report"])

    wait(browser, finished, timeout=90, message="the page never showed the campaign's end")
    assert same_page(browser, mark), "the page reloaded: the campaign's progress must arrive live (SSE)"
    assert len(seen - {""}) >= 2, f"the counts never changed on the page: {seen}"
    assert state_of(browser) == "completed"
    wait(browser, lambda d: text_of(d, "#verified").lower().startswith("verified"),
         message="the report's signature was not shown as verified")
    assert present(browser, "a#report-csv")
    assert present(browser, "#waves")
    screenshot(browser, shots, "campaign")

    campaigns = web.srv.campaigns
    assert campaigns is not None
    key = load_public_key(web.call(lambda: campaigns.attestation_public_pem(tenant_id=HOME)).encode())
    with web.http(browser) as http:
        answer = http.get(css(browser, "a#report-json").get_attribute("href"))
        assert answer.status_code == 200, answer.text
        document = answer.json()
        report = attestation.verify_report(base64.b64decode(document["cose_sign1"]), key)
        assert report == document["report"]
        assert report["summary"]["succeeded"] == len(web.endpoints), report["summary"]
        assert sorted(t["endpoint"] for t in report["targets"]) == sorted(web.endpoints)
        assert {t["version_after"] for t in report["targets"]} == {"2.0.0"}
        answer = http.get(css(browser, "a#report-csv").get_attribute("href"))
        assert answer.status_code == 200, answer.text
        assert answer.content == attestation.render_csv(report)

    css(browser, "a#nav-campaigns").click()
    wait(browser, lambda d: rows(d, "data-campaign") == {cid}, message="the campaign is not listed")
    screenshot(browser, shots, "campaigns")


# ---------------------------------------------------------------------- roles, tenants, CSRF


def test_auditor_sees_no_buttons_and_the_routes_refuse_her(web: Web, browser: WebDriver, second_browser: WebDriver,
                                                           shots: Path) -> None:
    rid = release(web)
    cid = campaign(web, rid, web.endpoints[:2])
    # what an operator sees: the forms whose routes the auditor then tries
    sign_in(browser, web, "alice")
    open_page(browser, web, "/ui/campaigns", "form#new-campaign")
    create = form_of(browser, "form#new-campaign")
    create_action = create.get_attribute("action")
    fields = {css(browser, "select#release").get_attribute("name"): rid,
              css(browser, "textarea#targets").get_attribute("name"): web.endpoints[0]}
    open_page(browser, web, f"/ui/campaigns/{cid}", "button#start")
    actions = {b: form_of(browser, f"button#{b}").get_attribute("action")
               for b in RUN_CAMPAIGNS_BUTTONS if present(browser, f"button#{b}")}
    assert "start" in actions

    audrey = second_browser
    sign_in(audrey, web, "audrey")
    assert present(audrey, "a#nav-usage") and present(audrey, "a#nav-audit")
    open_page(audrey, web, "/ui/campaigns", "table#campaigns")
    assert rows(audrey, "data-campaign") == {cid}
    assert not present(audrey, "form#new-campaign")
    open_page(audrey, web, f"/ui/campaigns/{cid}", "#state")
    for button in RUN_CAMPAIGNS_BUTTONS:
        assert not present(audrey, f"button#{button}"), f"the auditor sees button#{button}"
    for page in ("usage", "audit"):
        css(audrey, f"a#nav-{page}").click()
        prefix = f"/ui/{page}"
        wait(audrey, lambda d: path_of(d).startswith(prefix) and present(d, "#who"),  # noqa: B023
             message=f"no {page} page")
        screenshot(audrey, shots, page)

    with web.http(audrey) as http:
        token = csrf_of(audrey)
        answer = http.post(create_action, data={"csrf": token, **fields})
        assert answer.status_code == 403, (answer.status_code, answer.text[:300])
        for button, action in actions.items():
            answer = http.post(action, data={"csrf": token})
            assert answer.status_code == 403, (button, answer.status_code, answer.text[:300])
    campaigns = web.srv.campaigns
    assert campaigns is not None
    assert len(web.call(lambda: campaigns.list(tenant_id=HOME))) == 1
    assert campaign_state(web, cid) == "created"


def test_a_second_tenant_sees_none_of_it(web: Web, browser: WebDriver) -> None:
    rid = release(web)
    cid = campaign(web, rid, web.endpoints[:2])
    sign_in(browser, web, "bob")
    assert "op-b" in text_of(browser, "#who")
    assert text_of(browser, "#count-registered") == "0"
    for page, table, attribute in (("devices", "devices", "data-endpoint"),
                                   ("campaigns", "campaigns", "data-campaign"),
                                   ("releases", "releases", "data-release")):
        open_page(browser, web, f"/ui/{page}", f"table#{table}")
        assert rows(browser, attribute) == set(), page
        source = browser.page_source
        assert not any(ep in source for ep in web.endpoints), f"a HOME endpoint on bob's {page} page"
        assert cid not in source and rid not in source, f"HOME's campaign or release on bob's {page} page"
    with web.http(browser) as http:
        assert http.get(f"/ui/campaigns/{cid}").status_code == 404
        assert http.get("/ui/campaigns/no-such-campaign").status_code == 404


def test_a_form_post_without_its_csrf_token_is_refused(web: Web, browser: WebDriver) -> None:
    rid = release(web)
    with web.http(browser) as anonymous:  # no cookie yet: the sign-in form's own token is missing
        answer = anonymous.post("/ui/sign-in", data={"login": "alice", "password": PASSWORD})
        assert answer.status_code == 403, (answer.status_code, answer.text[:300])
    sign_in(browser, web, "alice")
    open_page(browser, web, "/ui/campaigns", "form#new-campaign")
    action = form_of(browser, "form#new-campaign").get_attribute("action")
    fields = {css(browser, "select#release").get_attribute("name"): rid,
              css(browser, "textarea#targets").get_attribute("name"): web.endpoints[0]}
    sign_out_action = form_of(browser, "form#sign-out").get_attribute("action")
    campaigns = web.srv.campaigns
    assert campaigns is not None
    with web.http(browser) as http:
        for data in (fields, {**fields, "csrf": ""}, {**fields, "csrf": "x" * 32}):
            answer = http.post(action, data=data)
            assert answer.status_code == 403, (answer.status_code, answer.text[:300])
        assert web.call(lambda: campaigns.list(tenant_id=HOME)) == []
        answer = http.post(sign_out_action, data={})
        assert answer.status_code == 403, (answer.status_code, answer.text[:300])
        # the same session, with its token: the refusals were the token's
        answer = http.post(action, data={**fields, "csrf": csrf_of(browser)})
        assert answer.status_code in (302, 303), (answer.status_code, answer.text[:300])
        assert re.fullmatch(r"/ui/campaigns/[^/]+", urlparse(answer.headers["location"]).path)
        assert len(web.call(lambda: campaigns.list(tenant_id=HOME))) == 1


def test_a_system_device_shows_its_components_and_the_release_page_its_components_and_delta(
        web: Web, browser: WebDriver, shots: Path) -> None:
    from client_sim.components import InstalledComponent
    from lwm2m_server.fota.releases import SystemComponent

    system = (InstalledComponent.generated("app", "1.0.0", 4096),
              InstalledComponent.generated("radio", "1.0.0", 2048),
              InstalledComponent.generated("config", "1.0.0", 100, "data"))
    [ep] = web.run(lambda: web.add_devices("sys-", 1, components=system))
    campaigns = web.srv.campaigns
    assert campaigns is not None
    made = [web.call(lambda v=v: campaigns.releases.create_system(  # type: ignore[misc]
        [SystemComponent(c.name, InstalledComponent.generated(c.name, v, len(c.content), c.kind).content, kind=c.kind)
         for c in system], vendor=VENDOR, class_name=CLASS_NAME, version=v, tenant_id=HOME, now=time.time()))
        for v in ("1.0.0", "2.0.0")]
    web.call(lambda: campaigns.releases.add_delta(made[1].id, base_release_id=made[0].id, tenant_id=HOME,
                                                  now=time.time()))
    sign_in(browser, web, "alice")
    open_page(browser, web, f"/ui/devices/{ep}", "table#components")
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('table#components tr[data-component]'),"
        " r => Array.from(r.cells, c => c.innerText.trim()));")
    assert [row[:4] for row in shown] == [[c.name, c.kind, "1.0.0", "installed"] for c in system], shown
    assert [row[6] for row in shown] == [c.digest.hex()[:16] for c in system]
    screenshot(browser, shots, "device-components")
    open_page(browser, web, "/ui/releases", "table#releases")
    assert "delta from 1.0.0" in text_of(browser, f"tr[data-release='{made[1].id}']")
    assert text_of(browser, f"tr[data-release='{made[1].id}'] li[data-component='config']").startswith("config (data)")
