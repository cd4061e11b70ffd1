"""Headless Chromium driven over the Chrome DevTools Protocol, for web/index.html's tests and
bench.py --browser: a small WebSocket client written with the standard library (no Selenium, no
Playwright, nothing to install but the browser). Real mouse, touch and key input goes through
Input.dispatch*Event, downloads are captured with Browser.setDownloadBehavior, and every request
a page makes is recorded from Network events.

    with headless_chromium(downloads="/tmp/d") as page:
        page.open("web/index.html")
        print(page.js("1 + 1"))

find_browser() is None where no Chromium or Chrome is installed (set CHROMIUM=/path/to/binary).
`python browser.py examples/browser.png` remakes the README's picture of the page.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TIMEOUT = 10  # seconds for any one wait on the browser, unless told otherwise


class CDP:
    """JSON messages over one WebSocket (RFC 6455: masked text frames out, unmasked frames in)."""

    def __init__(self, ws_url):
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = bytearray()
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        end = self.buffer.index(b"\r\n\r\n")
        head, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 4:]
        if head.split(b"\r\n")[0].split()[1] != b"101":
            raise ConnectionError(f"the browser refused the DevTools connection: {head[:200]!r}")
        self.next_id = 0
        self.pending = []  # events not yet asked for by wait_event
        self.log = []      # every event, for the checks at the end

    def _recv(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the browser closed the DevTools connection")
        return chunk

    def _read(self, n):
        while len(self.buffer) < n:
            self.buffer += self._recv()
        data, self.buffer = bytes(self.buffer[:n]), self.buffer[n:]
        return data

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else (
            bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
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
                data = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
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

    def call(self, method, session=None, timeout=TIMEOUT, **params):
        self.next_id += 1
        request = {"id": self.next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        self._send_frame(0x1, json.dumps(request).encode())
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            message = self._next()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
        raise TimeoutError(f"no answer to {method}")

    def wait_event(self, method, where=lambda params: True, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while True:
            for event in self.pending:
                if event["method"] == method and where(event.get("params", {})):
                    self.pending.remove(event)
                    return event["params"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event within {timeout} s")
            self._next()

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


def find_browser():
    """The Chromium or Chrome to run: $CHROMIUM, else the first of the usual names on PATH, else None."""
    names = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else [
        "chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"]
    return next((shutil.which(name) for name in names if shutil.which(name)), None)


class JSError(RuntimeError):
    """A script run in the page threw."""


class Page:
    """One tab of a headless Chromium, at 1000 x 700 CSS pixels and a pixel ratio of 1."""

    def __init__(self, cdp, session):
        self.cdp, self.session = cdp, session

    def send(self, method, timeout=TIMEOUT, **params):
        return self.cdp.call(method, self.session, timeout, **params)

    def open(self, path):
        """Load a local file and wait for its load event."""
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.cdp.wait_event("Page.loadEventFired")

    def js(self, expression, timeout=TIMEOUT):
        """The value of a JavaScript expression (awaited if it is a promise), as JSON makes it."""
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise JSError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression, timeout=TIMEOUT):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still false after {timeout} s")
            time.sleep(0.05)

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
        self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
        r = self.rect(selector)
        x, y = r["x"] + r["w"] / 2, r["y"] + r["h"] / 2
        self.mouse("mousePressed", x, y, 1)
        self.mouse("mouseReleased", x, y, 0)

    def type(self, text):
        for ch in text:
            self.send("Input.dispatchKeyEvent", type="keyDown", key=ch, text=ch, unmodifiedText=ch)
            self.send("Input.dispatchKeyEvent", type="keyUp", key=ch)

    def download(self, selector, folder, timeout=TIMEOUT):
        """Click `selector` and wait for the download it starts: the path of the file saved in `folder`."""
        self.click(selector)
        begun = self.cdp.wait_event("Browser.downloadWillBegin", timeout=timeout)
        done = self.cdp.wait_event("Browser.downloadProgress", timeout=timeout,
                                   where=lambda p: p["guid"] == begun["guid"] and p["state"] != "inProgress")
        if done["state"] != "completed":
            raise RuntimeError(f"the download of {begun['suggestedFilename']} ended {done['state']}")
        return Path(folder) / begun["suggestedFilename"]

    def requests(self):
        """The URL of every request the page has made so far, and of every WebSocket it opened."""
        return [e["params"]["request"]["url"] if e["method"] == "Network.requestWillBeSent" else e["params"]["url"]
                for e in self.cdp.log if e["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated")]

    def errors(self):
        """Exceptions the page's scripts threw, and console errors."""
        return [e["params"] for e in self.cdp.log if e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")]

    def screenshot(self, path, selector=None):
        """A PNG of the viewport, or of the element `selector`, to `path`."""
        clip = {}
        if selector:
            r = self.rect(selector)
            clip = {"clip": {"x": r["x"], "y": r["y"] + self.js("scrollY"), "width": r["w"], "height": r["h"], "scale": 1}}
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip)["data"]
        Path(path).write_bytes(base64.b64decode(data))


@contextmanager
def headless_chromium(downloads=None, width=1000, height=700, binary=None):
    """A Page in a fresh headless Chromium (its own profile, removed after), ended with its helper
    processes when the block ends. Raises FileNotFoundError without a browser and RuntimeError
    when it does not start."""
    binary = binary or find_browser()
    if binary is None:
        raise FileNotFoundError("no Chromium or Chrome found (apt-get install chromium, or set CHROMIUM=/path)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        log_path = Path(profile) / "chromium.log"
        # --no-sandbox: the sandbox needs user namespaces that containers and root often lack; the
        # pages are local files of this repository. Port 0: Chromium picks a free port and writes it
        # to DevToolsActivePort in the profile.
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                 "--remote-debugging-port=0", f"--user-data-dir={Path(profile) / 'profile'}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        cdp = None
        try:
            port_file = Path(profile) / "profile" / "DevToolsActivePort"
            deadline = time.monotonic() + 20
            while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not start: {log_path.read_text(errors='replace')[-600:]}")
                time.sleep(0.05)
            port, path = port_file.read_text().split()[:2]
            cdp = CDP(f"ws://127.0.0.1:{port}{path}")
            if downloads is not None:
                cdp.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True)
            target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
            session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            page = Page(cdp, session)
            page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            page.send("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=1)
            for domain in ("Page", "Network", "Runtime"):
                page.send(f"{domain}.enable")
            yield page
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


# ----------------------------------------------------------------------------- the README's picture

def picture_of_the_page(path, text="Your text, in the hand you drew, written here in the page stroke by stroke.",
                        seed=2):
    """A PNG of web/index.html having written `text` in a hand drawn on its pad: the first bundled
    hand's strokes, drawn with the mouse. examples/browser.png was made so."""
    web = Path(__file__).resolve().parent / "web"
    source = (web / "hands.js").read_text(encoding="utf-8")
    hand = json.loads(source[source.index("= ") + 2:source.rindex(";")])[0]
    with headless_chromium(width=1000, height=1400) as page:
        page.open(web / "index.html")
        page.js("document.getElementById('pad').scrollIntoView()")
        pad = page.rect("#pad")
        points = np.concatenate(hand["strokes"])
        low, high = points.min(0), points.max(0)
        scale = min((pad["w"] - 80) / (high[0] - low[0]), (pad["h"] - 60) / (high[1] - low[1]))
        for stroke in hand["strokes"]:
            drawn = (np.array(stroke) - low) * scale + [pad["x"] + 40, pad["y"] + 30]
            page.mouse_stroke([tuple(p) for p in (drawn if len(drawn) > 1 else np.repeat(drawn, 2, 0))])
        page.click("#pad-text")
        page.type(hand["text"])
        page.click("#use-hand")
        page.js(f"document.getElementById('text').value = {json.dumps(text)}; "
                f"document.getElementById('seed').value = {seed}; window.scrollTo(0, 0)")
        page.click("#write")
        page.wait_for("!handwritingPage.busy() && handwritingPage.result() !== null", timeout=120)
        page.js("window.scrollTo(0, 0)")
        bottom = page.js("(r => r.bottom + scrollY + 12)(document.getElementById('download-svg').getBoundingClientRect())")
        data = page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": 1000, "height": bottom, "scale": 1})["data"]
    from utils import atomic_path
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(base64.b64decode(data))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A picture of web/index.html at work, in headless Chromium.")
    parser.add_argument("out", nargs="?", default="examples/browser.png")
    picture_of_the_page(parser.parse_args().out)
