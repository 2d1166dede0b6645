"""Reports in a real browser: the monitor page and the audit report open in headless Chromium with no
console errors, every image decodes, and nothing overflows the viewport at a phone width of 390 px (wide
tables scroll inside their own box).

Chromium is driven over the DevTools protocol with a small websocket client written here on the standard
library (no new dependency). The tests skip with a reason where Debian's ``chromium`` is not installed
(``.ci/run`` installs it, best effort).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _missing import missing_tool

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    if CHROMIUM is None:
        missing_tool("Chromium", "chromium", "no chromium, chromium-browser or google-chrome on PATH")


PHONE_WIDTH = 390

# JavaScript run in the page: every <img> decoded (decode() rejects for a broken image), and every element
# whose box reaches past the viewport without an ancestor that scrolls or clips horizontally.
_CHECK_JS = r"""
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach((img) => { img.loading = 'eager'; });  // lazy images below the fold load when scrolled to
  const images = await Promise.all(imgs.map(async (img, i) => {
    try {
      await Promise.race([img.decode(), new Promise((_, no) => setTimeout(() => no(new Error('decode timeout')), 10000))]);
      return {i, ok: img.naturalWidth > 0 && img.naturalHeight > 0};
    }
    catch (e) { return {i, ok: false, error: String(e)}; }
  }));
  const vw = document.documentElement.clientWidth;
  const clips = (el) => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox === 'auto' || ox === 'scroll' || ox === 'hidden') return a.getBoundingClientRect().right <= vw + 1;
    }
    return false;
  };
  const offenders = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if ((r.right > vw + 1 || r.left < -1) && !clips(el)) {
      offenders.push(el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
        ? '.' + el.className.trim().split(/\s+/).join('.') : '') + ' right=' + Math.round(r.right));
      if (offenders.length >= 20) break;
    }
  }
  return JSON.stringify({images, n_images: imgs.length, offenders, viewport: vw,
                         scroll_width: document.documentElement.scrollWidth,
                         n_svg: document.querySelectorAll('svg').length});
})()
"""


class _WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, client-side masking."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        assert m, url
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake failed")
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0], head[:200]
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if op in (0x9, 0xA):  # ping/pong: ignore
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url, deadline, seen = None, time.monotonic() + 60, []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            self.proc.kill()
            missing_tool("Chromium", "chromium", f"it did not start: {''.join(seen)[-400:]}")
        self.ws = _WebSocket(url)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        target = pages[0]["targetId"] if pages else self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False,
             timeout: float = 60.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = json.loads(self.ws.recv())
            self.events.append(e)
            if e.get("method") == method:
                return e
        raise TimeoutError(method)

    def open(self, path: Path, width: int) -> dict[str, Any]:
        """Load ``path`` at a phone-sized viewport ``width`` and return the page checks."""
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": True}, session=True)
        self.events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        self.wait_event("Page.loadEventFired")
        res = self.call("Runtime.evaluate", {"expression": _CHECK_JS, "awaitPromise": True, "returnByValue": True},
                        session=True)
        out = json.loads(res["result"]["value"])
        out["errors"] = self.console_errors()
        return out

    def console_errors(self) -> list[str]:
        errs = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                errs.append(p.get("exceptionDetails", {}).get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errs.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errs.append(p["entry"].get("text", ""))
        return errs

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        self.ws.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _assert_page_ok(checks: dict[str, Any], what: str) -> None:
    assert not checks["errors"], f"{what}: console errors {checks['errors']}"
    bad = [i for i in checks["images"] if not i["ok"]]
    assert not bad, f"{what}: {len(bad)} of {checks['n_images']} images do not decode: {bad[:3]}"
    assert checks["viewport"] == PHONE_WIDTH
    assert not checks["offenders"], f"{what}: elements overflow the {PHONE_WIDTH} px viewport: {checks['offenders']}"
    assert checks["scroll_width"] <= checks["viewport"], f"{what}: the page scrolls sideways ({checks['scroll_width']} px)"


def _monitor_page(tmp_path: Path) -> Path:
    from failsight.monitor import Monitor

    rng = np.random.default_rng(0)
    k, m = 10, 600

    def probs(n: int, sharp: float) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, k, n)
        z = rng.normal(size=(n, k))
        z[np.arange(n), y] += sharp
        p = np.exp(z - z.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), y

    ref_p, ref_y = probs(m, 4.0)
    mon = Monitor(reference=(ref_p, ref_y), max_risk=0.1, store=tmp_path / "m.db", calibrator="temperature")
    for i, sharp in enumerate([4.0, 4.0, 3.0, 1.5]):
        p, y = probs(300, sharp)
        w = mon.update(probs=p, name=f"a-rather-long-batch-file-name-for-day-{i:03d}-of-the-deployment.npz")
        if i % 2 == 0:
            mon.add_labels(w.window_id, y)
    path = tmp_path / "mon" / "report.html"
    mon.report().write(path)
    mon.close()
    return path


def test_monitor_page_in_browser(browser, tmp_path):
    path = _monitor_page(tmp_path)
    checks = browser.open(path, PHONE_WIDTH)
    assert checks["n_images"] >= 3  # accuracy, drift and coverage figures
    _assert_page_ok(checks, "monitor page")


def test_audit_report_in_browser(browser, tmp_path):
    import failsight
    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN, train_classifier

    d = split_digits(seed=0, cal_size=0.25, test_size=0.25)
    model = SmallCNN(width=8, seed=0)
    train_classifier(model, d.x_train, d.y_train, epochs=4, seed=0, progress=False, num_threads=1)
    res = failsight.audit(model, (d.x_test, d.y_test), calibration=(d.x_cal, d.y_cal), n_boot=30,
                          calibrators=["temperature"], severities=(3,), steps=["reliability", "robustness", "slices"],
                          robustness_options={"shifts": ["contrast", "gaussian_noise"], "detection_sizes": (20,),
                                              "n_trials": 1, "n_null_trials": 2},
                          progress=False)
    path = tmp_path / "audit.html"
    res.to_html(path)
    checks = browser.open(path, PHONE_WIDTH)
    assert checks["n_images"] + checks["n_svg"] >= 3
    _assert_page_ok(checks, "audit report")


def test_checks_catch_overflow_errors_and_broken_images(browser, tmp_path):
    """The checks are not vacuous: a wide element, a console error and a broken image are all reported,
    while a wide table inside a scrolling box is not."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><head><meta name='viewport' content='width=device-width'></head><body>"
        "<div style='overflow-x:auto'><table style='width:900px'><tr><td>wide but scrolls</td></tr></table></div>"
        "<div id='wide' style='width:600px'>too wide</div>"
        "<img src='data:image/png;base64,AAAA' alt='broken'>"
        "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    checks = browser.open(page, PHONE_WIDTH)
    assert any(o.startswith("div") for o in checks["offenders"]), checks["offenders"]
    assert not any(o.startswith(("table", "td", "tr")) for o in checks["offenders"]), checks["offenders"]
    assert any("boom" in e for e in checks["errors"]), checks["errors"]
    assert [i["ok"] for i in checks["images"]] == [False]
