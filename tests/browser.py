"""A headless Chromium the browser tests drive through the DevTools protocol, as a user's browser would open a page.

Debian's ``chromium`` (``apt-get install chromium``; ``scripts/bootstrap.sh dev`` installs it where it can) is started
with a fresh profile and no network features of its own, on a DevTools port it picks itself; the tests load a page,
wait for what a user would see (text, elements), read it back with JavaScript and save screenshots. The protocol is
spoken over aiohttp's WebSocket client (installed with Ray's dashboard), so no browser-automation package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


def find_browser() -> str | None:
    """The path of an installed Chromium, or ``None``."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium with one page, driven through the DevTools protocol.

    Args:
        executable: The browser's path (:func:`find_browser`).
        timeout_s: How long a page may take to show what a test waits for.
    """

    def __init__(self, executable: str, timeout_s: float = 90.0) -> None:
        self.timeout_s = timeout_s
        self.profile = Path(tempfile.mkdtemp(prefix="dlrml-chromium-"))
        self.log = (self.profile / "chromium.log").open("w")
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.loop = asyncio.new_event_loop()
        self._next_id = 0
        self.ws = self.loop.run_until_complete(self._connect())

    async def _connect(self):
        import aiohttp

        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {(self.profile / 'chromium.log').read_text()[-2000:]}")
            await asyncio.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [p for p in json.load(response) if p["type"] == "page"]
        self.session = aiohttp.ClientSession()
        return await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=self.timeout_s)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result."""
        return self.loop.run_until_complete(self._call(method, **params))

    def open(self, url: str) -> None:
        """Navigate the page to ``url``."""
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, what: str, before: str = "") -> Any:
        """Wait until a JavaScript expression is truthy in the page and return its value; fail the test naming
        ``what`` (and showing the page's text) if it never is. ``before``: statements run before each try (e.g. a
        scroll that makes the page render what is below the fold)."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(f"(() => {{ {before}; return ({expression}); }})()")
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        pytest.fail(f"the page never showed {what} in {self.timeout_s:.0f} s; it shows:\n{self.text()[:3000]}")

    def click_text(self, text: str, selector: str = "button, [role=tab], [role=radio], label, a") -> None:
        """Click the first element matching ``selector`` whose visible text is exactly ``text``."""
        found = self.wait_for(
            f"""(() => {{
                const el = [...document.querySelectorAll({json.dumps(selector)})]
                    .find(e => e.innerText && e.innerText.trim() === {json.dumps(text)});
                if (el) {{ el.click(); return true; }}
                return false;
            }})()""",
            f"a clickable {text!r}",
        )
        assert found

    @staticmethod
    def scroll_below(selector: str, pixels: int) -> str:
        """JavaScript that scrolls the scrolling box around the first element matching ``selector`` down by
        ``pixels`` (for :meth:`wait_for`'s ``before``: pages render what is below the fold once it is in view)."""
        return f"""
            let box = document.querySelector({json.dumps(selector)});
            while (box && !(box.scrollHeight > box.clientHeight && getComputedStyle(box).overflowY !== 'visible'))
                box = box.parentElement;
            if (box) box.scrollTop += {int(pixels)};
        """

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the page."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the browser and remove its profile."""
        try:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
        finally:
            self.loop.close()
            # The browser and its helper processes (renderer, GPU, zygote) are one process group of their own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)
