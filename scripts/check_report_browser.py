#!/usr/bin/env python3
"""Open an HTML report in headless Chromium and check it: no console errors, no
uncaught exceptions, no failed or external requests, every image decoded. Optionally
save a screenshot of the first screen.

    python scripts/check_report_browser.py runs/quick/report/report.html [--screenshot docs/report_quick.png]

Talks to Chromium over the DevTools protocol with the standard library only (a minimal
WebSocket client), so it needs nothing but a `chromium` binary (Debian: apt-get install -y
chromium). Exit code 0: all checks passed; 1: a check failed (printed); 3: no browser.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The first Chromium-like binary on PATH (or $CHROMIUM)."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: masked text frames out,
    (possibly fragmented) text frames in, pings answered."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            buf += chunk
        return buf

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else None
            data = self._recv_exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 9:  # ping -> pong
                self.sock.sendall(bytes([0x8A, 0x80 | len(data)]) + b"\0\0\0\0" + data)
                continue
            if opcode in (0, 1, 2):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class DevTools:
    def __init__(self, ws: _WebSocket) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no answer to {method} within {timeout} s")

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        for ev in self.events:
            if ev["method"] == method:
                return ev
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"no {method} within {timeout} s")


def check_report(html_path: str | Path, screenshot: str | Path | None = None, browser: str | None = None,
                 width: int = 1280, height: int = 900, timeout: float = 60.0) -> dict:
    """Load ``html_path`` in headless Chromium; returns {"errors": [...], "images": [...],
    "requests": [...]} (an empty ``errors`` list means every check passed)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium binary found (" + ", ".join(BROWSERS) + "); apt-get install -y chromium")
    html_path = Path(html_path).resolve()
    url = html_path.as_uri()
    profile = tempfile.mkdtemp(prefix="smoothguard-chromium-")
    proc = subprocess.Popen([browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ws = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{browser} did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = []
        while not targets and time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            time.sleep(0.05)
        ws = _WebSocket(targets[0]["webSocketDebuggerUrl"], timeout=timeout)
        dt = DevTools(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        dt.call("Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        dt.call("Page.navigate", {"url": url})
        dt.wait_event("Page.loadEventFired", timeout)
        images = dt.call("Runtime.evaluate", {"expression": (
            "JSON.stringify(Array.from(document.images).map(i => ({src: i.src.slice(0, 30), complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight})))"), "returnByValue": True})
        images = json.loads(images["result"]["value"])
        try:  # let late events (console messages after load) arrive
            dt.call("Runtime.evaluate", {"expression": "1"}, timeout=5)
        except TimeoutError:
            pass
        errors, requests = [], []
        for ev in dt.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                errors.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", "")))
                                                                 for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                errors.append("uncaught exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                e = p["entry"]
                errors.append(f"log {e.get('level')} ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
            elif m == "Network.requestWillBeSent":
                requests.append(p.get("request", {}).get("url", ""))
            elif m == "Network.loadingFailed":
                errors.append(f"failed request: {p.get('errorText')}")
        external = [u for u in requests if not (u == url or u.startswith("data:"))]
        errors += [f"request to {u[:120]} (the report must be self-contained)" for u in external]
        errors += [f"broken image {i['src']}... (complete={i['complete']}, {i['width']}x{i['height']})"
                   for i in images if not i["complete"] or i["width"] == 0 or i["height"] == 0]
        if screenshot is not None:
            shot = dt.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        return {"errors": errors, "images": images, "requests": requests, "browser": browser}
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="the HTML file")
    p.add_argument("--screenshot", default=None, help="write a PNG of the first screen here")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args(argv)
    if find_browser() is None:
        print("check_report_browser: no Chromium binary found (apt-get install -y chromium); skipped", file=sys.stderr)
        return 3
    res = check_report(args.report, args.screenshot, width=args.width, height=args.height)
    print(f"{args.report}: {len(res['images'])} images, {len(res['requests'])} requests, "
          f"{len(res['errors'])} problems ({res['browser']})")
    for e in res["errors"]:
        print("  " + e)
    if args.screenshot:
        print(f"wrote {args.screenshot}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
