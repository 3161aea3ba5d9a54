"""Headless Chromium for the tests, driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so no websocket library and no network port is
needed. Debian's `chromium` package is the browser; scripts/check installs it where missing (as root).

A missing browser fails the test loudly (CI must render the report); a developer without Chromium may set
SENTDM_TESTS_WITHOUT_CHROMIUM=1 to skip those tests instead.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

OPT_OUT = "SENTDM_TESTS_WITHOUT_CHROMIUM"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ChromiumMissing(Exception):
    pass


def find_chromium() -> str:
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing(
        "Chromium is not installed: the HTML report tests open the report in it. Install it (`bash "
        f"scripts/install-chromium`, which scripts/check runs; or `apt-get install chromium`), or set {OPT_OUT}=1 to "
        "skip those tests."
    )


class Page:
    """One page of a headless browser: navigate, evaluate, screenshot, and every console message, uncaught
    exception, log entry and network request seen so far."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session
        self.console: list[dict[str, Any]] = []
        self.exceptions: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.requests: list[str] = []

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 30) -> dict[str, Any]:
        return self._browser.send(method, params, session=self._session, timeout_s=timeout_s)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            self.console.append(params)
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(params)
        elif method == "Log.entryAdded":
            self.log.append(params["entry"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    def open(self, url: str, *, width: int = 1200, height: int = 900) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self._browser.events.clear()
        self.send("Page.navigate", {"url": url})
        self._browser.wait_for("Page.loadEventFired", session=self._session)

    def evaluate(self, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def errors(self) -> list[str]:
        """Everything the page reported as an error or warning: console errors, uncaught exceptions, log entries
        of level error or warning (failed loads, Content-Security-Policy violations)."""
        found = [
            f"console.{c['type']}: {c.get('args')}" for c in self.console if c["type"] in ("error", "warning", "assert")
        ]
        found += [f"exception: {e['exceptionDetails']}" for e in self.exceptions]
        found += [f"log {e['level']}: {e.get('text')} {e.get('url', '')}" for e in self.log if e["level"] != "verbose"]
        return found

    def screenshot(self, path: Path, *, width: int = 1200) -> None:
        """The whole page, as a PNG."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, timeout_s=60)
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self._process = process
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._next_id = 0
        self.events: list[tuple[str | None, str, dict[str, Any]]] = []
        self._pages: dict[str, Page] = {}

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        return page

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None, timeout_s: float = 30
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self._read(deadline, waiting_for=method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    def wait_for(self, event: str, *, session: str | None = None, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for seen_session, method, params in self.events:
                if method == event and seen_session == session:
                    return params
            self._read(deadline, waiting_for=event)

    def _read(self, deadline: float, *, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self._process.poll() is not None:
                raise AssertionError(f"Chromium gave no answer to {waiting_for} (exit code {self._process.poll()})")
            ready, _, _ = select.select([self._in], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise AssertionError(f"Chromium closed the DevTools pipe while waiting for {waiting_for}")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        if "method" in message:
            session = message.get("sessionId")
            self.events.append((session, message["method"], message.get("params", {})))
            if session in self._pages:
                self._pages[session]._event(message["method"], message.get("params", {}))
        return message


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """A headless Chromium with a throwaway profile, stopped (and waited for) on exit."""
    executable = find_chromium()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_pipes() -> None:  # in the child: Chromium reads commands on fd 3 and writes answers on fd 4
        os.dup2(to_browser_r, 3)
        os.dup2(from_browser_w, 4)

    with tempfile.TemporaryDirectory(prefix="sentdm-chromium-") as profile:
        argv = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--font-render-hinting=none",
        ]
        if os.geteuid() == 0:
            argv.append("--no-sandbox")  # Chromium refuses to start its sandbox as root (CI runs as root)
        process = subprocess.Popen(
            [*argv, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes,
            pass_fds=(3, 4),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        browser = Browser(process, to_browser_w, from_browser_r)
        try:
            yield browser
        finally:
            with suppress(OSError):  # it may have gone already
                os.write(to_browser_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)
