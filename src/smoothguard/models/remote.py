"""Query-only classifiers: a base classifier behind an HTTP endpoint, and a server for one.

Denoised smoothing (Salman, Sun, Yang, Kapoor and Kolter, NeurIPS 2020) certifies
classifiers that can only be *queried*: an API that returns a label per image. Any Python
callable mapping a batch of [0, 1] images (N, C, H, W) to integer labels (N,) is already a
base classifier for :class:`~smoothguard.smoothing.SmoothedClassifier`;
:class:`HTTPClassifier` is such a callable for an HTTP endpoint, and :func:`make_server`
(``smoothguard serve``) exposes any model through the same protocol on 127.0.0.1.
Only the standard library is used (``http.client``, ``http.server``).

Protocol ``smoothguard-labels/1``
---------------------------------
``GET {URL}/info`` returns ``200`` and a JSON object::

    {"protocol": "smoothguard-labels/1", "num_classes": K, "in_shape": [C, H, W],
     "max_request_bytes": B, ...}   # a server may add fields (model name, sha256, ...)

``POST {URL}/predict`` classifies a batch. The request:

* header ``X-Smoothguard-Shape: N,C,H,W`` (decimal integers, N >= 1);
* header ``Content-Type: application/octet-stream``, ``Content-Length: 4*N*C*H*W``;
* body: the N images as **float32, little-endian, C-contiguous N x C x H x W**, in [0, 1]
  pixel units. Noisy images (x + noise) lie partly outside [0, 1] and are sent as they
  are, never clipped or quantized: float32 carries the exact values the in-process
  classifier would see, so an HTTP run and an in-process run under the same seed give the
  same counts and the same certificate.

The answer is ``200`` with ``Content-Type: application/json`` and body
``{"labels": [l_1, ..., l_N]}``: N integers in [0, K). Errors are 4xx/5xx with body
``{"error": "message"}``: ``400`` malformed request, ``404`` unknown path, ``413`` body
larger than the server's ``max_request_bytes``, ``500`` the model failed.

Client behaviour (:class:`HTTPClassifier`): a batch is split into requests of at most
``max_request_bytes`` (default 4 MiB, i.e. 1,337 Fashion-MNIST images); each request has a
``timeout`` (seconds, per socket operation); connection errors, timeouts, HTTP 5xx and
429 are retried ``retries`` times with exponential backoff (``backoff * 2**attempt``
seconds, at most ``max_backoff``); HTTP 4xx is not retried. A response that breaks the
protocol (malformed JSON, no ``labels`` list, a wrong number of labels, a non-integer or
out-of-range label) raises :class:`APIError` at once: a misbehaving endpoint must never be
turned into counts. Connections are kept alive, one per thread.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

PROTOCOL = "smoothguard-labels/1"
SHAPE_HEADER = "X-Smoothguard-Shape"
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
HOST = "127.0.0.1"

LabelFunction = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) [0, 1] float -> (N,) int64


class APIError(ValueError):
    """The classifier endpoint failed or broke the protocol (the message says how).

    A ValueError, so the CLI reports it as an error message with exit code 2."""


class HTTPClassifier:
    """A base classifier behind an HTTP endpoint speaking ``smoothguard-labels/1``.

    ``clf(x)`` sends the (N, C, H, W) float images ``x`` (any device) and returns int64
    labels (N,) on the CPU. Pass it to ``SmoothedClassifier(clf, num_classes, sigma)``.

    Args:
        url: ``http://host:port`` (optionally with a path prefix; ``https`` works too).
        num_classes: K; labels outside [0, K) raise :class:`APIError`. None: read it
            from ``GET /info`` on first use.
        timeout: seconds per socket operation of one request (> 0).
        retries: extra attempts after a connection error, timeout, 5xx or 429 (>= 0).
        backoff: first wait in seconds between attempts; doubled each time, at most
            ``max_backoff``.
        max_request_bytes: largest request body; batches are split to stay under it.
    """

    def __init__(self, url: str, num_classes: int | None = None, *, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 8.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API URL must look like http://127.0.0.1:8000, got {url!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if int(retries) < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0 seconds, got {backoff} and {max_backoff}")
        if int(max_request_bytes) < 4:
            raise ValueError(f"max_request_bytes must be >= 4, got {max_request_bytes}")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.max_request_bytes = int(max_request_bytes)
        self.requests = 0  # successful requests so far (all threads)
        self._local = threading.local()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HTTPClassifier({self.url!r}, num_classes={self.num_classes})"

    # ------------------------------------------------------------------ transport
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
        """One request with retries; returns the body of a 200 answer."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
            except (socket.timeout, TimeoutError) as exc:
                self._drop_connection()
                last = f"timed out after {self.timeout:g} s ({exc})"
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                last = f"connection failed: {type(exc).__name__}: {exc}"
                continue
            if status == 200:
                with self._lock:
                    self.requests += 1
                return data
            message = _error_message(data)
            self._drop_connection()  # after an error, start the next request on a fresh connection
            if status >= 500 or status == 429:
                last = f"HTTP {status}: {message}"
                continue
            raise APIError(f"{method} {self.url}{path}: HTTP {status}: {message}")
        raise APIError(f"{method} {self.url}{path} failed after {self.retries + 1} attempts; last: {last}")

    # ------------------------------------------------------------------ protocol
    def info(self) -> dict[str, Any]:
        """``GET /info``: the server's description (num_classes, in_shape, ...)."""
        data = _parse_json(self._request("GET", "/info"), f"GET {self.url}/info")
        if not isinstance(data, dict):
            raise APIError(f"GET {self.url}/info: expected a JSON object, got {type(data).__name__}")
        return data

    def _num_classes(self) -> int:
        if self.num_classes is None:
            k = self.info().get("num_classes")
            if not isinstance(k, int) or isinstance(k, bool) or k < 2:
                raise APIError(f"GET {self.url}/info: num_classes must be an integer >= 2, got {k!r}")
            self.num_classes = k
        return self.num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"HTTPClassifier takes a batch (N, C, H, W), got shape {tuple(x.shape)}")
        k = self._num_classes()
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy(), dtype="<f4")
        per_image = int(np.prod(arr.shape[1:])) * 4
        if per_image > self.max_request_bytes:
            raise ValueError(f"one image takes {per_image} bytes, more than max_request_bytes={self.max_request_bytes}")
        rows = max(1, self.max_request_bytes // per_image)
        out = []
        for start in range(0, arr.shape[0], rows):
            chunk = arr[start:start + rows]
            out.append(self._predict_chunk(chunk, k))
        if not out:
            return torch.zeros(0, dtype=torch.int64)
        return torch.from_numpy(np.concatenate(out))

    def _predict_chunk(self, chunk: np.ndarray, k: int) -> np.ndarray:
        headers = {"Content-Type": "application/octet-stream",
                   SHAPE_HEADER: ",".join(str(int(v)) for v in chunk.shape)}
        where = f"POST {self.url}/predict"
        data = _parse_json(self._request("POST", "/predict", chunk.tobytes(), headers), where)
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, list):
            raise APIError(f"{where}: expected a JSON object with a 'labels' list, got {str(data)[:200]}")
        n = chunk.shape[0]
        if len(labels) != n:
            raise APIError(f"{where}: sent {n} images, got {len(labels)} labels")
        bad = [v for v in labels if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise APIError(f"{where}: labels must be integers, got {bad[0]!r}")
        out = np.asarray(labels, dtype=np.int64)
        if n and (out.min() < 0 or out.max() >= k):
            wrong = int(out[(out < 0) | (out >= k)][0])
            raise APIError(f"{where}: label {wrong} is outside [0, {k}) (num_classes={k})")
        return out

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop_connection()


def _error_message(data: bytes) -> str:
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and "error" in obj:
            return str(obj["error"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return data[:200].decode("utf-8", "replace") or "(empty body)"


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"{where}: malformed JSON in the answer ({exc}): {data[:100]!r}") from exc


# ---------------------------------------------------------------------- server


def model_labels(model: nn.Module) -> LabelFunction:
    """A label function from a model returning logits: ``argmax model(x)`` on the
    model's device, in inference mode, eager and in float32."""
    from smoothguard.utils import model_device

    device = model_device(model)
    model.eval()

    def labels(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device)).argmax(1).cpu()

    return labels


def make_server(
    label_fn: LabelFunction,
    num_classes: int,
    in_shape: Sequence[int],
    port: int = 0,
    *,
    max_request_bytes: int = 64 << 20,
    info: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server for ``label_fn`` speaking ``smoothguard-labels/1``, bound to
    127.0.0.1 only (port 0: an ephemeral port; read ``server.server_address[1]``).

    Requests are served in threads; ``label_fn`` is called under a lock, one batch at a
    time. Run it with ``server.serve_forever()`` (e.g. in a thread) and stop it with
    ``server.shutdown(); server.server_close()``.
    """
    in_shape = tuple(int(v) for v in in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    description = {**(info or {}), "protocol": PROTOCOL, "num_classes": int(num_classes),
                   "in_shape": list(in_shape), "max_request_bytes": int(max_request_bytes)}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
        # headers and body go out in two writes; with Nagle's algorithm the second waits for
        # the client's delayed ACK (~40 ms per request on Linux)
        disable_nagle_algorithm = True

        def log_message(self, fmt: str, *args: Any) -> None:
            if log is not None:
                log(fmt % args)

        def _send(self, status: int, obj: Any, close: bool = False) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")  # sets close_connection too
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/").endswith("/info") or self.path.rstrip("/") == "/info":
                self._send(200, description)
            else:
                self._send(404, {"error": f"unknown path {self.path}; use GET /info or POST /predict"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if not self.path.rstrip("/").endswith("/predict"):
                self.rfile.read(length)
                self._send(404, {"error": f"unknown path {self.path}; use POST /predict"})
                return
            if length > max_request_bytes:
                # the body is not read, so the connection cannot be reused
                self._send(413, {"error": f"body of {length} bytes exceeds max_request_bytes={max_request_bytes}"},
                           close=True)
                return
            body = self.rfile.read(length)
            try:
                shape = tuple(int(v) for v in self.headers.get(SHAPE_HEADER, "").split(","))
            except ValueError:
                shape = ()
            if len(shape) != 4 or shape[0] < 1 or shape[1:] != in_shape:
                self._send(400, {"error": f"header {SHAPE_HEADER} must be N,{','.join(map(str, in_shape))}, "
                                          f"got {self.headers.get(SHAPE_HEADER)!r}"})
                return
            if len(body) != 4 * int(np.prod(shape)):
                self._send(400, {"error": f"body has {len(body)} bytes; shape {shape} as float32 needs "
                                          f"{4 * int(np.prod(shape))}"})
                return
            x = torch.from_numpy(np.frombuffer(body, dtype="<f4").astype(np.float32).reshape(shape))
            try:
                with lock:
                    labels = label_fn(x)
                labels = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
            except Exception as exc:  # noqa: BLE001 - report any model failure as HTTP 500
                self._send(500, {"error": f"model failed: {type(exc).__name__}: {exc}"})
                return
            self._send(200, {"labels": labels})

    server = ThreadingHTTPServer((HOST, int(port)), Handler)
    server.daemon_threads = True
    return server
