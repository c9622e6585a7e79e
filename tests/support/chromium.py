"""A real headless Chromium for tests, driven through its DevTools protocol over a pipe.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL byte) from its file
descriptor 3 and write replies and events to descriptor 4. That needs nothing beyond Chromium itself: no
chromedriver (whose version must match the browser's), no Selenium, no WebSocket client, no port.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

INSTALL_HINT = "install it with `make setup` (as root) or `apt-get install chromium`"


def chromium_or_skip() -> str:
    """The Chromium executable, or a skipped test that says how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip(f"Chromium not found: {INSTALL_HINT}")


class Chromium:
    """One headless browser (`with Chromium(exe, tmp_path) as browser: page = browser.open(url)`)."""

    def __init__(self, executable: str, profile: Path, width: int = 1200, height: int = 900, timeout: float = 60):
        self.timeout = timeout
        self.log = Path(profile) / "chromium.log"
        # Pipe ends numbered 10 or above, so moving them onto 3 and 4 in the child cannot overwrite one another.
        to_browser, self._send_fd = _high(os.pipe())
        self._receive_fd, from_browser = _high(os.pipe())

        def onto_3_and_4():  # in the child, before exec
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 f"--user-data-dir={Path(profile) / 'chromium-profile'}", f"--window-size={width},{height}",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                 "--disable-background-networking", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(3, 4), preexec_fn=onto_3_and_4)
        os.close(to_browser)
        os.close(from_browser)
        self._messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next_id = 0

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.call("Browser.close", timeout=10)
            except (AssertionError, OSError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self._send_fd)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None, events: list | None = None) -> dict:
        """Sends one command and returns its result; events that arrive meanwhile are appended to `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id, method, timeout, events)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url: str) -> Page:
        """A new tab that has loaded `url` (its load event fired: images included)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        navigated = page.call("Page.navigate", {"url": url})
        if navigated.get("errorText"):
            raise AssertionError(f"{url} did not open: {navigated['errorText']}")
        self._wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
                   f"the load event of {url}", None, page.events)
        return page

    def _wait(self, match, what: str, timeout: float | None, events: list | None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"Chromium did not answer ({what}); its log:\n{self._log_tail()}") from None
            if message is None:
                raise AssertionError(f"Chromium exited ({what}); its log:\n{self._log_tail()}")
            if match(message):
                return message
            if events is not None and "method" in message:
                events.append(message)

    def _read(self) -> None:
        """Splits the browser's output into messages (None when it closes the pipe)."""
        buffer = b""
        with os.fdopen(self._receive_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *complete, buffer = buffer.split(b"\0")
                for raw in complete:
                    self._messages.put(json.loads(raw))
        self._messages.put(None)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else "(no log)"


class Page:
    """One tab: commands go to its session; its events (console, network) are kept in `events`."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session, self.events = browser, session, []

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.session, events=self.events)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, clip: dict | None = None) -> bytes:
        """A PNG of the viewport, or of `clip` ({x, y, width, height} in page coordinates)."""
        params = {"format": "png"}
        if clip:
            params.update(clip={**clip, "scale": 1}, captureBeyondViewport=True)
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])

    def console_errors(self) -> list[str]:
        """Errors the page raised or logged: console.error, uncaught exceptions, failed loads, CSP and the like."""
        errors = []
        for event in self._mine():
            method, p = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                errors.append(f"exception: {details.get('exception', {}).get('description', details['text'])}")
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".rstrip())
        return errors

    def requested_urls(self) -> list[str]:
        """Every URL the page asked the network stack for (data: URIs included where Chromium reports them)."""
        return [e["params"]["request"]["url"] for e in self._mine() if e["method"] == "Network.requestWillBeSent"]

    def _mine(self) -> list[dict]:
        return [e for e in self.events if e.get("sessionId") == self.session]


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The two descriptors moved to numbers of 10 or more (non-inheritable, like os.pipe's)."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved
