"""draw.html, the page that records a line of handwriting as a style prime, in headless Chromium.

The browser is driven over the Chrome DevTools Protocol with a small WebSocket client written
here with the standard library (no Selenium, no Playwright): real mouse, touch and key input goes
through Input.dispatch*Event, the download is captured with Browser.setDownloadBehavior, and every
request the page makes is recorded from Network events. Skipped where no Chromium or Chrome is
installed (set CHROMIUM=/path/to/binary to pick one).
"""
import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "draw.html"
TIMEOUT = 10  # seconds for any one wait on the browser


# ----------------------------------------------------------------------------- a minimal CDP client

class CDP:
    """JSON messages over one WebSocket (RFC 6455: masked text frames out, unmasked frames in)."""

    def __init__(self, ws_url):
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.split(b"\r\n")[0].split()[1] == b"101", head
        self.next_id = 0
        self.pending = []  # events not yet asked for by wait_event
        self.log = []      # every event, for the checks at the end

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the browser closed the DevTools connection")
        return chunk

    def _read(self, n):
        while len(self.buffer) < n:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else (
            bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode]) + length + mask + masked)

    def _message(self):
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n >= 126:
                n = struct.unpack(">H" if n == 126 else ">Q", self._read(2 if n == 126 else 8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode == 0x9:
                self._send_frame(0xA, data)  # ping: pong
            elif opcode in (0x0, 0x1, 0x2):
                parts.append(data)
                if b0 & 0x80:  # final fragment
                    return json.loads(b"".join(parts))

    def _next(self):
        message = self._message()
        if "method" in message:
            self.pending.append(message)
            self.log.append(message)
        return message

    def call(self, method, session=None, **params):
        self.next_id += 1
        request = {"id": self.next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        self._send_frame(0x1, json.dumps(request).encode())
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = self._next()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
        raise TimeoutError(f"no answer to {method}")

    def wait_event(self, method, where=lambda params: True):
        deadline = time.monotonic() + TIMEOUT
        while True:
            for event in self.pending:
                if event["method"] == method and where(event.get("params", {})):
                    self.pending.remove(event)
                    return event["params"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event within {TIMEOUT} s")
            self._next()

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


def find_browser():
    names = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else [
        "chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"]
    return next((shutil.which(name) for name in names if shutil.which(name)), None)


class Page:
    """One tab of a headless Chromium, at 1000 x 700 CSS pixels and a pixel ratio of 1."""

    def __init__(self, cdp, session):
        self.cdp, self.session = cdp, session

    def send(self, method, **params):
        return self.cdp.call(method, self.session, **params)

    def js(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def rect(self, selector):
        return self.js(f"(r => ({{x: r.left, y: r.top, w: r.width, h: r.height}}))"
                       f"(document.querySelector({json.dumps(selector)}).getBoundingClientRect())")

    def mouse(self, kind, x, y, buttons):
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons, clickCount=1)

    def mouse_stroke(self, points):
        (x0, y0), *rest = points
        self.mouse("mousePressed", x0, y0, 1)
        for x, y in rest:
            self.mouse("mouseMoved", x, y, 1)
        self.mouse("mouseReleased", *rest[-1], 0)

    def touch_stroke(self, points):
        kinds = ["touchStart"] + ["touchMove"] * (len(points) - 1)
        for kind, (x, y) in zip(kinds, points):
            self.send("Input.dispatchTouchEvent", type=kind, touchPoints=[{"x": x, "y": y, "id": 1}])
        self.send("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])

    def click(self, selector):
        r = self.rect(selector)
        x, y = r["x"] + r["w"] / 2, r["y"] + r["h"] / 2
        self.mouse("mousePressed", x, y, 1)
        self.mouse("mouseReleased", x, y, 0)

    def type(self, text):
        for ch in text:
            self.send("Input.dispatchKeyEvent", type="keyDown", key=ch, text=ch, unmodifiedText=ch)
            self.send("Input.dispatchKeyEvent", type="keyUp", key=ch)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium or Chrome found (apt-get install chromium, or set CHROMIUM=/path)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    log_path = tmp_path_factory.mktemp("chromium-log") / "chromium.log"
    # --no-sandbox: the sandbox needs user namespaces that containers and root often lack; the
    # page is a local file of this repository. Port 0: Chromium picks a free port and writes it
    # to DevToolsActivePort in the profile.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"{binary} did not start: {log_path.read_text(errors='replace')[-600:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        cdp = CDP(f"ws://127.0.0.1:{port}{path}")
        cdp.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True)
        target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
        session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(cdp, session)
        page.send("Emulation.setDeviceMetricsOverride", width=1000, height=700, deviceScaleFactor=1, mobile=False)
        page.send("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=1)
        for domain in ("Page", "Network", "Runtime"):
            page.send(f"{domain}.enable")
        page.send("Page.navigate", url=PAGE.as_uri())
        page.cdp.wait_event("Page.loadEventFired")
        yield page, downloads
    finally:
        if cdp is not None:
            cdp.close()
        # Chromium's helper processes share its new session's process group: end them all.
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


# ----------------------------------------------------------------------------- the tests

def test_page_is_self_contained():
    html = PAGE.read_text(encoding="utf-8")
    urls = set(re.findall(r"\w+://[^\s\"'<>)]*", html)) - {"http://www.w3.org/2000/svg"}
    assert not urls, f"the page must not refer to anything outside itself: {urls}"
    # what could load something: attributes and tags, CSS, and the script's network APIs
    for pattern in (r"(?i)\bsrc\s*=", r"(?i)<(link|img|iframe|object|embed|audio|video)\b", r"@import",
                    r"@font-face", r"(?<![\w.])url\(", r"\bfetch\(", r"XMLHttpRequest", r"WebSocket",
                    r"EventSource", r"sendBeacon", r"\bimport\("):
        assert not re.search(pattern, html), f"draw.html contains {pattern!r}"
    assert "handwritingJSON" in html and "touch-action: none" in html


def test_draw_undo_download_clear(browser):
    page, downloads = browser
    state = lambda: page.js("handwritingJSON()")
    disabled = lambda button: page.js(f"document.getElementById('{button}').disabled")
    assert state() == {"text": "", "strokes": []}
    assert disabled("undo") and disabled("clear") and disabled("download")

    pad = page.rect("#pad")
    assert pad["w"] > 900 and pad["h"] >= 160, pad  # wide, at a 1000 px window
    left, top = pad["x"], pad["y"]

    # stroke 1, mouse: down and to the right, with a repeated point (dropped) and fractional
    # coordinates (rounded to 0.1); points are relative to the pad's top left corner, y down
    page.mouse_stroke([(left + 40, top + 30), (left + 55, top + 60), (left + 55, top + 60),
                       (left + 70.26, top + 95.64), (left + 90, top + 120)])
    stroke1 = [[40, 30], [55, 60], [70.3, 95.6], [90, 120]]
    assert state() == {"text": "", "strokes": [stroke1]}
    assert not disabled("undo") and disabled("download")  # no text yet

    # stroke 2, touch: a finger writes upwards (y decreases)
    page.touch_stroke([(left + 150, top + 140), (left + 170, top + 110), (left + 200, top + 80)])
    stroke2 = [[150, 140], [170, 110], [200, 80]]
    assert state()["strokes"] == [stroke1, stroke2]

    page.click("#text")
    page.type("Hello, world")
    assert state() == {"text": "Hello, world", "strokes": [stroke1, stroke2]}
    assert not disabled("download")

    page.click("#undo")
    expected = {"text": "Hello, world", "strokes": [stroke1]}
    assert state() == expected

    page.click("#download")
    begun = page.cdp.wait_event("Browser.downloadWillBegin")
    assert begun["suggestedFilename"] == "handwriting-hello-world.json"
    progress = page.cdp.wait_event("Browser.downloadProgress",
                                   lambda p: p["guid"] == begun["guid"] and p["state"] != "inProgress")
    assert progress["state"] == "completed", progress
    saved = downloads / "handwriting-hello-world.json"
    assert json.loads(saved.read_text(encoding="utf-8")) == expected

    # Ctrl+Z (focus on the Download button now) undoes a stroke too
    page.send("Input.dispatchKeyEvent", type="keyDown", modifiers=2, key="z", code="KeyZ", windowsVirtualKeyCode=90)
    page.send("Input.dispatchKeyEvent", type="keyUp", modifiers=2, key="z", code="KeyZ", windowsVirtualKeyCode=90)
    assert state() == {"text": "Hello, world", "strokes": []}

    page.mouse_stroke([(left + 10, top + 10), (left + 20, top + 20)])
    assert state()["strokes"] == [[[10, 10], [20, 20]]]
    page.click("#clear")
    assert state() == {"text": "Hello, world", "strokes": []}
    assert disabled("download") and disabled("undo")

    # the page loaded itself and nothing else; a blob: URL is the download, made in the page
    requested = [e["params"]["request"]["url"] for e in page.cdp.log if e["method"] == "Network.requestWillBeSent"]
    assert PAGE.as_uri() in requested  # the monitor does see requests
    assert all(url == PAGE.as_uri() or url.startswith(("blob:", "data:")) for url in requested), requested
    assert not [e for e in page.cdp.log if e["method"] == "Network.webSocketCreated"]
    errors = [e["params"] for e in page.cdp.log if e["method"] == "Runtime.exceptionThrown"]
    assert not errors, errors
