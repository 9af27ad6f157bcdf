"""What the browser tests share: Debian's Chromium under Playwright, the demo in a thread,
a watch on the pages' consoles, and screenshots.

- :func:`launch_chromium` starts ``/usr/bin/chromium`` headless through Playwright's
  sync API (no browser download, ever).
- :func:`running_demo` runs :func:`hrvstream.demo.run_demo` (embedded broker, virtual
  straps, agents, server, alert engine, dashboard) in a thread with its own event loop,
  and stops it from the outside; an error it logs fails the module.
- :class:`ConsoleWatch` collects console errors, uncaught page exceptions and
  Content-Security-Policy violations of every page of a browser context.
- :func:`save_screenshot` writes ``docs/screenshots/<name>.png`` and checks it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, WebError

from hrvstream.demo import SignIn, run_demo

#: Debian's Chromium (the ``chromium`` package); Playwright never downloads a browser here.
CHROMIUM = Path("/usr/bin/chromium")
#: No sandbox (containers run as root), no GPU, no /dev/shm (small in containers).
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
#: Where the screenshots go (committed, and linked from the README).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless (the caller checks that :data:`CHROMIUM` exists)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True
    )


# == the demo in a thread =====================================================================


@dataclass
class DemoRun:
    """A running demo: where it keeps its files and how to sign in."""

    workdir: Path
    sign_in: SignIn

    @property
    def url(self) -> str:
        """The dashboard's base URL, ending in ``/``."""
        return self.sign_in.url

    @property
    def accounts_path(self) -> Path:
        return self.workdir / "accounts.db"

    @property
    def store_path(self) -> Path:
        return self.workdir / "demo.db"


@contextmanager
def running_demo(
    workdir: Path,
    *,
    speed: float,
    duration_s: float,
    password: str,
    start_timeout_s: float = 120.0,
    stop_timeout_s: float = 120.0,
) -> Iterator[DemoRun]:
    """Run the demo in a thread until the ``with`` block ends; yield once the dashboard listens.

    The demo's own failure (before or after it is ready) is raised here: at the start if
    it never became ready, at the end otherwise; so is any error that hrvstream or the
    web server logged meanwhile (see :class:`_ProblemLog`).
    """
    events: queue.Queue[tuple[str, SignIn | BaseException | None]] = queue.Queue()
    loop_box: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    out = io.StringIO()

    async def main() -> None:
        stop = asyncio.Event()
        loop_box.append((asyncio.get_running_loop(), stop))
        await run_demo(
            workdir,
            speed=speed,
            duration_s=duration_s,
            http_port=0,
            stop=stop,
            out=out,
            table_every_s=3600.0,  # no table: the tests read the dashboard
            password=password,
            on_ready=lambda sign_in: events.put(("ready", sign_in)),
        )

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            events.put(("ended", exc))
        else:
            events.put(("ended", None))

    problems = _ProblemLog()
    logging.getLogger().addHandler(problems)
    thread = threading.Thread(target=thread_main, name="hrvstream-demo", daemon=True)
    thread.start()
    try:
        kind, value = events.get(timeout=start_timeout_s)
    except queue.Empty:
        raise AssertionError(f"the demo was not ready within {start_timeout_s:g} s") from None
    if kind != "ready" or not isinstance(value, SignIn):
        raise AssertionError(f"the demo ended before it was ready:\n{out.getvalue()}") from (
            value if isinstance(value, BaseException) else None
        )
    try:
        yield DemoRun(workdir, value)
    finally:
        loop, stop = loop_box[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(stop_timeout_s)
        logging.getLogger().removeHandler(problems)
    assert not thread.is_alive(), f"the demo did not stop within {stop_timeout_s:g} s"
    kind, value = events.get_nowait()
    if isinstance(value, BaseException):
        raise AssertionError("the demo failed") from value
    assert problems.lines == [], "the demo logged errors:\n" + "\n".join(problems.lines)


class _ProblemLog(logging.Handler):
    """Records at ERROR and above, or with a traceback, of hrvstream and the web server.

    The embedded broker (amqtt) is left out: on a loaded machine it logs an ERROR for
    every PUBACK the server sends later than amqtt's own timeout, which says nothing
    about the dashboard.
    """

    WATCHED = ("hrvstream", "aiohttp")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in self.WATCHED and (
            record.levelno >= logging.ERROR or record.exc_info
        ):
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


# == console, page errors, CSP ================================================================

#: Reports every Content-Security-Policy violation as a console error (Playwright's init
#: scripts are injected by the browser itself, so the page's own CSP does not stop this).
CSP_REPORTER = """
document.addEventListener("securitypolicyviolation", (ev) => {
  console.error(`CSP violation: ${ev.violatedDirective} blocked ${ev.blockedURI || "inline"}`
    + ` at ${ev.sourceFile || "?"}:${ev.lineNumber}`);
});
"""


@dataclass
class ConsoleWatch:
    """Console errors and warnings, uncaught exceptions and CSP violations of a context.

    A refused request (a 401 or 404 the test provokes on purpose) makes Chromium log
    "Failed to load resource: the server responded with a status of N"; such lines are
    expected only for what :meth:`expect_http_error` names.
    """

    entries: list[tuple[str, str]] = field(default_factory=list)  # (text, resource url)
    expected: set[tuple[str, int]] = field(default_factory=set)  # (path, status)

    @classmethod
    def attach(cls, context: BrowserContext) -> ConsoleWatch:
        watch = cls()
        context.add_init_script(CSP_REPORTER)
        context.on("console", watch._console)
        context.on("weberror", watch._web_error)
        return watch

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.entries.append((f"console.{msg.type}: {msg.text}", msg.location.get("url", "")))

    def _web_error(self, error: WebError) -> None:
        self.entries.append((f"uncaught: {error.error}", error.page.url if error.page else ""))

    def expect_http_error(self, path: str, status: int) -> None:
        """A refused request for ``path`` (no query) with ``status`` is what the test wants."""
        self.expected.add((path, status))

    def _is_expected(self, text: str, url: str) -> bool:
        path = urlsplit(url).path
        return any(
            path == p
            and f"Failed to load resource: the server responded with a status of {s}" in text
            for p, s in self.expected
        )

    @property
    def problems(self) -> list[str]:
        """What went wrong on the pages, as ``text [url]`` lines."""
        return [f"{t} [{u}]" for t, u in self.entries if not self._is_expected(t, u)]


# == pages =====================================================================================


def no_reload_marker(page: Page) -> None:
    """Mark the loaded document; :func:`was_not_reloaded` tells whether it is still the same."""
    page.evaluate("() => { window.__hrvstreamTestMarker = 'still here'; }")


def was_not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("() => window.__hrvstreamTestMarker === 'still here'"))


#: How many pixels of a chart canvas have the colour of its data line (light scheme).
LINE_PIXELS_JS = """
(canvas) => {
  const name = canvas.dataset.testid === "chart-lf_hf" ? "--chart-line-2" : "--chart-line";
  const hex = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  if (!canvas.width || !canvas.height || rgb.some((c) => !isFinite(c))) return 0;
  // read a copy, so the page's own canvas keeps its fast (GPU) path
  const copy = document.createElement("canvas");
  copy.width = canvas.width;
  copy.height = canvas.height;
  const ctx = copy.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(canvas, 0, 0);
  const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 200 && Math.abs(data[i] - rgb[0]) < 40 &&
        Math.abs(data[i + 1] - rgb[1]) < 40 && Math.abs(data[i + 2] - rgb[2]) < 40) n++;
  }
  return n;
}
"""


def wait_for_chart_line(page: Page, testid: str, *, min_pixels: int, timeout_ms: float) -> None:
    """Wait until the chart ``testid`` shows a data line of at least ``min_pixels`` pixels."""
    page.wait_for_function(
        f"""() => {{
            const c = document.querySelector('canvas[data-testid="{testid}"]');
            return c !== null && ({LINE_PIXELS_JS})(c) >= {min_pixels};
        }}""",
        timeout=timeout_ms,
    )


# == screenshots ===============================================================================


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file (from its IHDR chunk)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def save_screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Write ``docs/screenshots/<name>.png`` (overwriting it) and check it is a real picture."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    started = time.time()
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    assert path.stat().st_mtime >= started - 1, f"{path} was not rewritten"
    size = path.stat().st_size
    assert size > 10_000, f"{path} is only {size} bytes: a blank page?"
    viewport = page.viewport_size
    assert viewport is not None
    width, height = png_size(path)
    assert width == viewport["width"], (path, width, viewport)
    assert height >= viewport["height"] if full_page else height == viewport["height"]
    return path


def poll_until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll ``check`` (something outside the browser: a file) until true, or fail."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)  # the polling interval, not a synchronisation
