"""The therapist dashboard in a real browser (Debian's Chromium under Playwright) against
the real demo.

One demo (:func:`hrvstream.demo.run_demo` at 60x: embedded broker, three virtual patients
on virtual BLE straps, their agents, the server with the alert engine, the dashboard)
runs in a thread for the whole module. Right after it starts, a therapist's overview page
is opened and kept open (``watcher``): the stress alert (session minute ~19, about 20 s
of real time) must appear on it without a reload. A second therapist, assigned only a
patient that is not in the demo, is added to the demo's accounts file.

Nothing sleeps to synchronise: every wait is one of Playwright's auto-waiting ``expect``
assertions or ``wait_for_function`` with an explicit timeout. Every page's console
errors, uncaught exceptions and Content-Security-Policy violations are collected, and a
test fails on any it did not provoke on purpose (a 401 or 404 it asked for).

The screenshots linked from the README are written here, to ``docs/screenshots/``:
``login.png``, ``overview.png`` (live values and the open stress alert),
``patient.png`` and ``patient-tablet.png`` (768x1024) (charts drawn, the alert
acknowledged in the history, the alert settings panel).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    ViewportSize,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from hrvstream.dashboard.accounts import Accounts
from hrvstream.dashboard.app import SESSION_COOKIE
from tests.conftest import require
from tests.dashboard.browser import (
    CHROMIUM,
    ConsoleWatch,
    DemoRun,
    launch_chromium,
    no_reload_marker,
    poll_until,
    running_demo,
    save_screenshot,
    wait_for_chart_line,
    was_not_reloaded,
)

PATIENTS = ("p-calm-01", "p-stress-02", "p-noisy-03")
STRESSED = "p-stress-02"
CALM = "p-calm-01"
SPEED = 60.0
#: Session time; far more than the module needs (it stops the demo when it is done).
DURATION_S = 4 * 3600.0
PASSWORD = "demo-" + secrets.token_urlsafe(12)
THERAPIST, THERAPIST2 = "therapist", "therapist2"
PASSWORD2 = "second-" + secrets.token_urlsafe(12)
#: The second therapist's only patient: not a demo patient (and sending no data).
OTHER_PATIENT = "p-other-99"

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
TABLET: ViewportSize = {"width": 768, "height": 1024}

UI_MS = 15_000  # a page loads, a click is answered
LIVE_MS = 30_000  # a live value changes (a window every 5 s of session time: ~0.1 s)
STATUS_MS = 45_000  # the agents' status heartbeat: every 30 s of real time
ALERT_MS = 120_000  # the stress alert is raised ~20 s after the demo starts (at 60x)
#: Live messages the first therapist's socket must receive per patient while the second
#: one's listens: a metrics window every 5 s of session time, so about 5 s at 60x.
WINDOWS_PER_PATIENT = 60

pytestmark = pytest.mark.usefixtures("watcher")


def at(demo: DemoRun, path: str) -> str:
    """The absolute URL of ``path`` (starting with ``/``) on the demo's dashboard."""
    return demo.url.rstrip("/") + path


# == fixtures =================================================================================


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        require(f"Chromium at {CHROMIUM} (Debian package 'chromium')")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    workdir = tmp_path_factory.mktemp("browser") / "demo"
    with running_demo(workdir, speed=SPEED, duration_s=DURATION_S, password=PASSWORD) as run:
        # The demo's accounts file is shared by file: a second therapist joins it live.
        with Accounts(run.accounts_path) as accounts:
            accounts.add_user(THERAPIST2, PASSWORD2)
            accounts.assign(THERAPIST2, OTHER_PATIENT)
        yield run


def open_page(
    browser: Browser, viewport: ViewportSize
) -> tuple[BrowserContext, Page, ConsoleWatch]:
    """A fresh browser context (no cookies) with one page, its console watched."""
    context = browser.new_context(
        viewport=viewport,
        device_scale_factor=1,
        locale="en-GB",
        timezone_id="UTC",
        color_scheme="light",
    )
    watch = ConsoleWatch.attach(context)
    return context, context.new_page(), watch


OpenPage = Callable[..., tuple[Page, ConsoleWatch]]


@pytest.fixture
def new_page(browser: Browser) -> Iterator[OpenPage]:
    """``new_page(viewport=DESKTOP)``: a page in a fresh context, closed after the test."""
    contexts: list[BrowserContext] = []

    def make(viewport: ViewportSize = DESKTOP) -> tuple[Page, ConsoleWatch]:
        context, page, watch = open_page(browser, viewport)
        contexts.append(context)
        return page, watch

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Page, demo: DemoRun, username: str, password: str, path: str = "/") -> None:
    """Go to ``path``, get sent to the sign-in page, sign in, and land back on ``path``."""
    page.goto(at(demo, path))
    expect(page).to_have_url(re.compile(r"/login\?next="), timeout=UI_MS)
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(at(demo, path), timeout=UI_MS)
    expect(page.get_by_test_id("current-user")).to_have_text(username, timeout=UI_MS)


def session_cookies(context: BrowserContext) -> list[str]:
    return [c.get("value", "") for c in context.cookies() if c.get("name") == SESSION_COOKIE]


def tiles(page: Page) -> Locator:
    return page.get_by_test_id("tiles").locator("> [data-testid^='tile-']")


@dataclass
class Watcher:
    """The therapist's overview, opened before the stress episode and never reloaded."""

    page: Page
    watch: ConsoleWatch
    open_alerts_at_load: int


@pytest.fixture(scope="module")
def watcher(browser: Browser, demo: DemoRun) -> Iterator[Watcher]:
    context, page, watch = open_page(browser, DESKTOP)
    sign_in(page, demo, THERAPIST, PASSWORD)
    for p in PATIENTS:
        expect(page.get_by_test_id(f"tile-{p}")).to_be_visible(timeout=UI_MS)
    # the open alerts are rendered before the tiles, from the same answer
    n_open = page.get_by_test_id("open-alerts").locator("> li").count()
    no_reload_marker(page)
    yield Watcher(page, watch, n_open)
    context.close()


@pytest.fixture(scope="module")
def stress_alert(watcher: Watcher) -> str:
    """The id of the stress alert, once it is in the open page's alert strip."""
    page = watcher.page
    item = (
        page.get_by_test_id("open-alerts")
        .locator("> li")
        .filter(has=page.get_by_test_id("alert-patient").filter(has_text=STRESSED))
    )
    expect(item).to_have_count(1, timeout=ALERT_MS)
    testid = item.get_attribute("data-testid")
    assert testid is not None and testid.startswith("open-alert-"), testid
    return testid.removeprefix("open-alert-")


# == sign-in ==================================================================================


def test_a_wrong_password_is_refused(demo: DemoRun, new_page: OpenPage) -> None:
    page, watch = new_page()
    page.goto(at(demo, "/"))
    expect(page).to_have_url(at(demo, "/login?next=/"), timeout=UI_MS)
    expect(page.get_by_test_id("login-error")).to_have_count(0)
    save_screenshot(page, "login")

    for username in (THERAPIST, "nobody-here"):  # a wrong password, an unknown user
        page.get_by_test_id("login-username").fill(username)
        page.get_by_test_id("login-password").fill(PASSWORD + "-wrong")
        with page.expect_response(
            lambda r: r.request.method == "POST" and urlsplit(r.url).path == "/login"
        ) as refused:
            page.get_by_test_id("login-submit").click()
        assert refused.value.status == 401
        # the same message for both: the page does not tell which was wrong
        expect(page.get_by_test_id("login-error")).to_have_text(
            "Wrong username or password", timeout=UI_MS
        )
        expect(page).to_have_url(re.compile(r"/login(\?.*)?$"))
        expect(page.get_by_test_id("login-username")).to_have_value(username)
        expect(page.get_by_test_id("login-password")).to_have_value("")
        assert session_cookies(page.context) == []
        assert page.request.get(at(demo, "/api/me")).status == 401
    watch.expect_http_error("/login", 401)

    # The right password (the form still works after refusals) signs in.
    page.get_by_test_id("login-username").fill(THERAPIST)
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(at(demo, "/"), timeout=UI_MS)
    expect(page.get_by_test_id("current-user")).to_have_text(THERAPIST, timeout=UI_MS)
    [cookie] = [c for c in page.context.cookies() if c.get("name") == SESSION_COOKIE]
    assert cookie.get("httpOnly") is True and cookie.get("sameSite") == "Strict", cookie
    me = page.request.get(at(demo, "/api/me"))
    assert me.status == 200 and me.json()["username"] == THERAPIST
    assert sorted(me.json()["patients"]) == sorted(PATIENTS)
    assert watch.problems == []


# == the overview, live =======================================================================


def test_the_overview_shows_the_demo_patients_live(watcher: Watcher) -> None:
    page = watcher.page
    conn = page.get_by_test_id("conn-status")
    expect(conn).to_have_text("live", timeout=UI_MS)
    expect(conn).to_have_attribute("data-state", "live")
    expect(tiles(page)).to_have_count(len(PATIENTS))
    for p in PATIENTS:
        tile = page.get_by_test_id(f"tile-{p}")
        expect(tile.get_by_test_id("patient-link")).to_have_text(p)
        expect(tile.get_by_test_id("online")).to_have_attribute("data-state", "online")
        for name in ("hr", "rmssd"):
            expect(tile.get_by_test_id(name)).to_have_text(re.compile(r"^\d+$"), timeout=LIVE_MS)
        expect(tile.get_by_test_id("lf_hf")).to_have_text(
            re.compile(r"^\d+\.\d\d$"), timeout=LIVE_MS
        )
        expect(tile.get_by_test_id("stress")).not_to_have_attribute("data-state", "none")

    # The numbers move with the data, over the WebSocket, without a reload.
    before = {
        p: {
            name: page.get_by_test_id(f"tile-{p}").get_by_test_id(name).inner_text()
            for name in ("hr", "rmssd", "lf_hf")
        }
        for p in PATIENTS
    }
    for p in PATIENTS:
        tile = page.get_by_test_id(f"tile-{p}")
        for name in ("rmssd", "lf_hf"):
            expect(tile.get_by_test_id(name)).not_to_have_text(before[p][name], timeout=LIVE_MS)
    expect(page.get_by_test_id(f"tile-{STRESSED}").get_by_test_id("hr")).not_to_have_text(
        before[STRESSED]["hr"], timeout=LIVE_MS
    )
    assert was_not_reloaded(page)
    expect(conn).to_have_text("live")
    assert watcher.watch.problems == []


# == the stress alert =========================================================================


def test_the_stress_alert_appears_on_the_open_overview(
    demo: DemoRun, watcher: Watcher, stress_alert: str
) -> None:
    page = watcher.page
    assert watcher.open_alerts_at_load == 0, (
        "an alert was already open when the overview was loaded: it cannot show that "
        "alerts appear live"
    )
    assert was_not_reloaded(page)
    expect(page.get_by_test_id("alerts-strip")).to_be_visible()
    expect(page.get_by_test_id("open-alert-count")).to_have_text("(1)")
    item = page.get_by_test_id(f"open-alert-{stress_alert}")
    expect(item.get_by_test_id("alert-patient")).to_have_text(STRESSED)
    expect(item.get_by_test_id("alert-rule")).to_have_text("acute stress")
    expect(item.get_by_test_id("alert-severity")).to_have_text(re.compile(r"^(warning|critical)$"))
    expect(item.get_by_test_id("open-alert-link")).to_have_attribute(
        "href", f"/patients/{STRESSED}"
    )

    # What the page shows is what the server's alert engine says.
    overview = page.request.get(at(demo, "/api/patients"))
    assert overview.status == 200
    [alert] = [a for a in overview.json()["open_alerts"] if a["alert_id"] == stress_alert]
    assert alert["rule"] == "acute_stress" and alert["patient"] == STRESSED, alert
    message = alert["explanation"]["message"]
    assert re.search(r"[Ss]tress score", message), message
    expect(item.get_by_test_id("alert-explanation")).to_have_text(message)

    # The stressed patient's tile: marked, and first.
    tile = page.get_by_test_id(f"tile-{STRESSED}")
    expect(tile).to_have_attribute("data-alert", alert["severity"])
    expect(tile.get_by_test_id("tile-alerts")).to_have_text("1 open alert")
    expect(tiles(page).first).to_have_attribute("data-patient", STRESSED)
    # The agents report their strap's battery in a status heartbeat every 30 s of real
    # time (the first one goes out before the strap is connected): wait for it, so the
    # screenshot shows complete tiles.
    for p in PATIENTS:
        tile = page.get_by_test_id(f"tile-{p}")
        expect(tile.get_by_test_id("battery")).to_have_text(
            re.compile(r"^battery \d+%$"), timeout=STATUS_MS
        )
        expect(tile.get_by_test_id("rmssd")).to_have_text(re.compile(r"^\d+$"))
    expect(page.get_by_test_id(f"open-alert-{stress_alert}")).to_be_visible()
    save_screenshot(page, "overview")
    assert watcher.watch.problems == []


def stored_acknowledgement(db: Path, alert_id: str) -> dict[str, Any] | None:
    """The ``acknowledged`` state change of ``alert_id`` in the demo's store (read-only)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT rule, fields FROM alerts WHERE alert_id = ? AND state = 'acknowledged'",
                (alert_id,),
            ).fetchone()
    except sqlite3.OperationalError:  # busy: the server is writing
        return None
    if row is None:
        return None
    return {"rule": row[0], **json.loads(row[1])}


def test_acknowledging_the_alert_is_kept_in_the_history(
    demo: DemoRun, watcher: Watcher, stress_alert: str, new_page: OpenPage
) -> None:
    page, watch = new_page()
    sign_in(page, demo, THERAPIST, PASSWORD)
    # from the overview's alert strip to the patient
    page.get_by_test_id(f"open-alert-{stress_alert}").get_by_test_id("open-alert-link").click()
    expect(page).to_have_url(at(demo, f"/patients/{STRESSED}"), timeout=UI_MS)
    expect(page.get_by_test_id("patient-title")).to_have_text(STRESSED)

    row = page.get_by_test_id(f"alert-{stress_alert}")
    expect(row).to_be_visible(timeout=UI_MS)
    expect(row).to_have_attribute("data-open", "true")
    expect(row.get_by_test_id("alert-rule")).to_have_text("acute stress")
    expect(row.get_by_test_id("alert-explanation")).to_have_text(re.compile(r"[Ss]tress score"))
    expect(row.get_by_test_id("alert-details")).to_contain_text("coverage")
    expect(row.get_by_test_id("alert-ack-info")).to_be_hidden()
    expect(page.get_by_test_id("no-alerts")).to_be_hidden()

    note = f"Phoned her, she is safe at home ({secrets.token_hex(3)})."
    row.get_by_test_id("ack-note").fill(note)
    with page.expect_response(
        lambda r: urlsplit(r.url).path == f"/api/patients/{STRESSED}/alerts/{stress_alert}/ack"
    ) as answer:
        row.get_by_test_id("ack-button").click()
    assert answer.value.status == 200, answer.value.text()
    acked = answer.value.json()["alert"]
    assert (acked["state"], acked["acknowledged_by"], acked["note"]) == (
        "acknowledged",
        THERAPIST,
        note,
    )

    def shows_the_acknowledgement() -> None:
        info = row.get_by_test_id("alert-ack-info")
        expect(info).to_be_visible(timeout=UI_MS)
        expect(info).to_contain_text(f"by {THERAPIST}")
        expect(info).to_contain_text(note)
        expect(row.get_by_test_id("alert-state")).to_contain_text("acknowledged")
        expect(row.get_by_test_id("ack-form")).to_be_hidden()

    shows_the_acknowledgement()

    # The overview left open shows it too, live: acknowledged, or gone if it is also
    # resolved by now (then it is no longer open).
    watcher.page.wait_for_function(
        """(id) => {
            const li = document.querySelector(`[data-testid="open-alert-${id}"]`);
            return li === null ||
                li.querySelector('[data-testid="alert-state"]').textContent === "acknowledged";
        }""",
        arg=stress_alert,
        timeout=UI_MS,
    )

    # It is stored: a reload, the JSON API and the store file all have it.
    page.reload()
    expect(page.get_by_test_id("patient-title")).to_have_text(STRESSED, timeout=UI_MS)
    shows_the_acknowledgement()
    history = page.request.get(at(demo, f"/api/patients/{STRESSED}/alerts"))
    assert history.status == 200
    [entry] = [a for a in history.json()["alerts"] if a["alert_id"] == stress_alert]
    assert entry["rule"] == "acute_stress"
    assert entry["acknowledged"]["by"] == THERAPIST and entry["acknowledged"]["note"] == note
    assert "acknowledged" in [e["state"] for e in entry["events"]]
    poll_until(
        lambda: stored_acknowledgement(demo.store_path, stress_alert) is not None,
        "the acknowledgement in demo.db",
        timeout_s=UI_MS / 1000,
    )
    stored = stored_acknowledgement(demo.store_path, stress_alert)
    assert stored is not None
    assert (stored["rule"], stored["acknowledged_by"], stored["note"]) == (
        "acute_stress",
        THERAPIST,
        note,
    )
    assert watch.problems == []


def test_the_history_says_when_the_alert_was_raised(
    demo: DemoRun, stress_alert: str, new_page: OpenPage
) -> None:
    page, watch = new_page()
    sign_in(page, demo, THERAPIST, PASSWORD, f"/patients/{STRESSED}")
    row = page.get_by_test_id(f"alert-{stress_alert}")
    expect(row).to_be_visible(timeout=UI_MS)
    if row.get_by_test_id("ack-form").is_visible():  # not acknowledged by the test above
        row.get_by_test_id("ack-button").click()
    expect(row.get_by_test_id("alert-ack-info")).to_be_visible(timeout=UI_MS)
    history = page.request.get(at(demo, f"/api/patients/{STRESSED}/alerts"))
    [entry] = [a for a in history.json()["alerts"] if a["alert_id"] == stress_alert]
    states = [e["state"] for e in entry["events"]]
    [raised] = [e for e in entry["events"] if e["state"] == "raised"]
    assert watch.problems == []
    assert states[0] == "raised", states
    assert entry["raised_unix_s"] == raised["t_unix_s"], (entry["raised_unix_s"], raised)


def test_the_patient_page_on_a_desktop_and_a_tablet(
    demo: DemoRun, stress_alert: str, new_page: OpenPage
) -> None:
    for viewport, name in ((DESKTOP, "patient"), (TABLET, "patient-tablet")):
        page, watch = new_page(viewport)
        sign_in(page, demo, THERAPIST, PASSWORD, f"/patients/{STRESSED}")
        expect(page.get_by_test_id("conn-status")).to_have_text("live", timeout=UI_MS)
        expect(page.get_by_test_id("hr")).to_have_text(re.compile(r"^\d+$"), timeout=LIVE_MS)
        expect(page.get_by_test_id("rmssd")).to_have_text(re.compile(r"^\d+$"))
        expect(page.get_by_test_id("baseline")).to_contain_text("Baseline from")
        expect(page.get_by_test_id("range-1h")).to_have_attribute("aria-pressed", "true")
        expect(page.get_by_test_id(f"alert-{stress_alert}")).to_be_visible(timeout=UI_MS)
        # The charts have their data lines drawn (the tachogram fills as beats arrive).
        for chart, min_pixels in (("chart-rr", 300), ("chart-rmssd", 300), ("chart-lf_hf", 300)):
            wait_for_chart_line(page, chart, min_pixels=min_pixels, timeout_ms=LIVE_MS)
        # Nothing wider than the screen (no sideways scrolling on a tablet).
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name}: the page is {overflow} px wider than the screen"
        save_screenshot(page, name, full_page=True)
        assert watch.problems == []


# == alert settings ===========================================================================


def test_a_therapist_changes_a_patients_alert_settings(demo: DemoRun, new_page: OpenPage) -> None:
    patient = CALM  # not the stress patient: the alert tests keep the clinic's settings
    page, watch = new_page()
    sign_in(page, demo, THERAPIST, PASSWORD, f"/patients/{patient}")
    raise_score = page.get_by_test_id("settings-raise-score")
    quiet_hours = page.get_by_test_id("settings-quiet-hours")
    updated = page.get_by_test_id("settings-updated")
    error = page.get_by_test_id("settings-error")
    # The clinic's settings, loaded into the form (disabled until then).
    expect(raise_score).to_be_enabled(timeout=UI_MS)
    expect(raise_score).to_have_value("2")
    expect(page.get_by_test_id("settings-min-duration")).to_have_value("2")  # minutes
    expect(quiet_hours).to_have_value("22:00-07:00")
    expect(page.get_by_test_id("settings-acute-enabled")).to_be_checked()
    expect(page.get_by_test_id("settings-trend-enabled")).to_be_checked()
    expect(updated).to_contain_text("clinic's settings")
    expect(error).to_be_hidden()

    url = f"/api/patients/{patient}/alert-settings"

    def save() -> int:
        with page.expect_response(
            lambda r: r.request.method == "POST" and urlsplit(r.url).path == url
        ) as answer:
            page.get_by_test_id("settings-save").click()
        return answer.value.status

    # A value the server refuses: its message, and nothing saved.
    raise_score.fill("9")
    assert save() == 400
    watch.expect_http_error(url, 400)
    expect(error).to_be_visible(timeout=UI_MS)
    expect(error).to_contain_text("critical score")
    expect(updated).to_contain_text("clinic's settings")

    raise_score.fill("2.8")
    quiet_hours.fill("off")
    assert save() == 200
    expect(updated).to_contain_text(f"changed by {THERAPIST}", timeout=UI_MS)
    expect(error).to_be_hidden()
    expect(page.get_by_test_id("settings-saved")).to_have_text("Saved.")

    # Kept by the server: a reload shows them, and the API says the same.
    page.reload()
    expect(page.get_by_test_id("patient-title")).to_have_text(patient, timeout=UI_MS)
    expect(raise_score).to_be_enabled(timeout=UI_MS)
    expect(raise_score).to_have_value("2.8")
    expect(quiet_hours).to_have_value("off")
    expect(page.get_by_test_id("settings-acute-enabled")).to_be_checked()
    expect(updated).to_contain_text(f"changed by {THERAPIST}")
    answer = page.request.get(at(demo, url))
    assert answer.status == 200
    got = answer.json()
    assert got["updated_by"] == THERAPIST
    assert (got["settings"]["raise_score"], got["settings"]["quiet_hours"]) == (2.8, "off")
    assert watch.problems == []


# == who sees whom ============================================================================


def test_a_second_therapist_cannot_see_or_open_the_first_ones_patients(
    demo: DemoRun, stress_alert: str, new_page: OpenPage
) -> None:
    page, watch = new_page()
    sign_in(page, demo, THERAPIST2, PASSWORD2)
    expect(page.get_by_test_id("tiles")).to_have_attribute("aria-busy", "false", timeout=UI_MS)
    expect(tiles(page)).to_have_count(1)
    expect(page.get_by_test_id(f"tile-{OTHER_PATIENT}")).to_be_visible()
    expect(page.get_by_test_id("alerts-strip")).to_be_hidden()
    for p in PATIENTS:
        expect(page.get_by_test_id(f"tile-{p}")).to_have_count(0)
        expect(page.locator("body")).not_to_contain_text(p)
    me = page.request.get(at(demo, "/api/me")).json()
    assert me["username"] == THERAPIST2 and me["patients"] == [OTHER_PATIENT], me
    overview = page.request.get(at(demo, "/api/patients")).json()
    assert [s["patient"] for s in overview["patients"]] == [OTHER_PATIENT]
    assert overview["open_alerts"] == []

    # By URL: the same not-found page as for a patient that does not exist.
    pages = {}
    for p in (STRESSED, "p-nobody-00"):
        response = page.goto(at(demo, f"/patients/{p}"))
        assert response is not None and response.status == 404, p
        expect(page.get_by_test_id("not-found")).to_be_visible()
        pages[p] = response.text()
        watch.expect_http_error(f"/patients/{p}", 404)
    assert pages[STRESSED] == pages["p-nobody-00"]
    assert STRESSED not in pages[STRESSED]

    # The JSON API: 404, as for an unknown patient.
    for path in ("", "/metrics", "/beats", "/alerts"):
        for p in (STRESSED, "p-nobody-00"):
            answer = page.request.get(at(demo, f"/api/patients/{p}{path}"))
            assert answer.status == 404, (p, path)
            assert answer.json() == {"error": "not found"}, (p, path)

    # Acknowledging the first therapist's alert from the page (with a valid CSRF token).
    page.goto(at(demo, "/"))
    expect(page.get_by_test_id("current-user")).to_have_text(THERAPIST2, timeout=UI_MS)
    ack_path = f"/api/patients/{STRESSED}/alerts/{stress_alert}/ack"
    status = page.evaluate(
        """async (path) => {
            const me = await (await fetch("/api/me")).json();
            const r = await fetch(path, {
                method: "POST",
                headers: {"X-CSRF-Token": me.csrf_token, "Content-Type": "application/json"},
                body: JSON.stringify({note: "not mine"}),
            });
            return r.status;
        }""",
        ack_path,
    )
    assert status == 404
    watch.expect_http_error(ack_path, 404)
    assert watch.problems == []


#: Opens a WebSocket from the page (the page's origin and session), watches ``patients``
#: and collects every message in ``window.__collected``; resolves once the watches are sent.
START_COLLECTING_JS = """
async (patients) => {
  const messages = [];
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.addEventListener("message", (ev) => messages.push(JSON.parse(ev.data)));
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve);
    ws.addEventListener("error", () => reject(new Error("the WebSocket failed")));
  });
  window.__collected = messages;
  window.__socket = ws;
  for (const patient of patients) ws.send(JSON.stringify({type: "watch", patient}));
}
"""

#: Pings, waits for the pong (messages come in order: whatever was sent before it has
#: arrived), closes the socket and returns what it collected.
STOP_COLLECTING_JS = """
async () => {
  const ws = window.__socket;
  const pong = new Promise((resolve) => ws.addEventListener("message", (ev) => {
    if (JSON.parse(ev.data).type === "pong") resolve();
  }));
  ws.send(JSON.stringify({type: "ping"}));
  await pong;
  ws.close();
  return window.__collected;
}
"""

#: Whether the first therapist's socket has received enough live data about every patient.
ENOUGH_JS = """
([patients, n, watched]) => {
  const seen = window.__collected || [];
  const count = (type, p) => seen.filter((m) => m.type === type && m.patient === p).length;
  return patients.every((p) => count("metrics", p) >= n && count("assessment", p) >= n)
      && count("beats", watched) >= n;
}
"""


def test_a_second_therapists_websocket_carries_nothing_of_the_first_ones_patients(
    demo: DemoRun, new_page: OpenPage
) -> None:
    second, second_watch = new_page()
    sign_in(second, demo, THERAPIST2, PASSWORD2)
    first, first_watch = new_page()
    sign_in(first, demo, THERAPIST, PASSWORD)

    # The second therapist's socket listens for the whole time the first one's receives
    # live data about every demo patient (about 5 s at 60x).
    second.evaluate(START_COLLECTING_JS, [STRESSED, "p-calm-01"])
    first.evaluate(START_COLLECTING_JS, [STRESSED])
    first.wait_for_function(
        ENOUGH_JS, arg=[list(PATIENTS), WINDOWS_PER_PATIENT, STRESSED], timeout=LIVE_MS * 2
    )
    got_first: list[dict[str, Any]] = first.evaluate(STOP_COLLECTING_JS)
    got_second: list[dict[str, Any]] = second.evaluate(STOP_COLLECTING_JS)

    # The first therapist: everything about their patients (the assertion below has teeth).
    assert got_first[0]["type"] == "hello" and got_first[0]["username"] == THERAPIST
    assert {"type": "watching", "patient": STRESSED} in got_first
    about = {p: [m for m in got_first if m.get("patient") == p] for p in PATIENTS}
    assert all(len(about[p]) >= 2 * WINDOWS_PER_PATIENT for p in PATIENTS)

    # The second: a hello, a refusal per watch, a pong, and nothing else.
    assert got_second[0]["type"] == "hello" and got_second[0]["username"] == THERAPIST2
    refusals = [m for m in got_second if m["type"] == "error"]
    assert refusals == [
        {"type": "error", "error": "not found", "patient": STRESSED},
        {"type": "error", "error": "not found", "patient": "p-calm-01"},
    ]
    leaked = [
        m
        for m in got_second
        if m["type"] not in ("hello", "error", "pong") or any(p in json.dumps(m) for p in PATIENTS)
    ]
    leaked = [m for m in leaked if m not in refusals]
    assert leaked == [], leaked[:5]
    assert [m["type"] for m in got_second][-1] == "pong"
    assert first_watch.problems == [] and second_watch.problems == []


# == signing out ==============================================================================


def test_signing_out_ends_the_session(demo: DemoRun, browser: Browser, new_page: OpenPage) -> None:
    page, watch = new_page()
    sign_in(page, demo, THERAPIST, PASSWORD, f"/patients/{STRESSED}")
    expect(page.get_by_test_id("conn-status")).to_have_text("live", timeout=UI_MS)
    [token] = session_cookies(page.context)

    # A request of the page still in flight when the session ends is refused (and the
    # page goes to the sign-in page): that 401 is no error of the page's.
    for path in ("", "/metrics", "/beats", "/alerts"):
        watch.expect_http_error(f"/api/patients/{STRESSED}{path}", 401)
    watch.expect_http_error("/api/me", 401)
    page.get_by_test_id("logout-button").click()
    expect(page).to_have_url(at(demo, "/login"), timeout=UI_MS)
    assert session_cookies(page.context) == []
    assert page.request.get(at(demo, "/api/me")).status == 401
    page.goto(at(demo, "/"))
    expect(page).to_have_url(at(demo, "/login?next=/"), timeout=UI_MS)

    # The session ended on the server, not only in this browser: its old cookie is dead.
    other = browser.new_context()
    try:
        other.add_cookies([{"name": SESSION_COOKIE, "value": token, "url": demo.url}])
        assert other.request.get(at(demo, "/api/me")).status == 401
    finally:
        other.close()
    assert watch.problems == []


def test_the_page_recovers_when_the_connection_comes_back(
    demo: DemoRun, new_page: OpenPage
) -> None:
    """The live socket drops and the network is down for a while; then it is back.

    The page's WebSocket goes through Playwright's WebSocket routing (to the real server)
    so the test can cut it: Chromium's offline emulation alone does not end an open
    WebSocket, so the network going down is the socket closed from the network's side,
    new connections refused, and the browser told it is offline.
    """
    page, watch = new_page()
    network_up = [True]
    sockets: list[WebSocketRoute] = []

    def route(ws: WebSocketRoute) -> None:
        if not network_up[0]:
            ws.close(code=1001, reason="network down (test)")
            return
        sockets.append(ws)
        ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws$"), route)
    sign_in(page, demo, THERAPIST, PASSWORD)
    conn = page.get_by_test_id("conn-status")
    expect(conn).to_have_text("live", timeout=UI_MS)
    expect(page.get_by_test_id(f"tile-{STRESSED}")).to_be_visible()
    no_reload_marker(page)

    network_up[0] = False
    page.context.set_offline(True)
    sockets[-1].close(code=1001, reason="network down (test)")
    expect(conn).to_have_text("reconnecting…", timeout=UI_MS)
    expect(conn).to_have_attribute("data-state", "reconnecting")

    # Back: the page reconnects (at once on the browser's "online" event) and fetches
    # the overview again, so nothing missed while it was away stays missing.
    n_sockets = len(sockets)
    with page.expect_request(lambda r: urlsplit(r.url).path == "/api/patients", timeout=UI_MS):
        network_up[0] = True
        page.context.set_offline(False)
    expect(conn).to_have_text("live", timeout=UI_MS)
    assert len(sockets) == n_sockets + 1
    lf_hf = page.get_by_test_id(f"tile-{STRESSED}").get_by_test_id("lf_hf")
    shown = lf_hf.inner_text()
    expect(lf_hf).not_to_have_text(shown, timeout=LIVE_MS)
    assert was_not_reloaded(page)
    assert watch.problems == []
