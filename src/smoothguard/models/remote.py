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
``max_request_bytes`` (default 4 MiB, i.e. 1,337 Fashion-MNIST images; and at most the
server's ``max_request_bytes`` once ``/info`` has been read); ``timeout`` is a
**deadline for one whole request** (connect, send, status, headers and body: a server that
drips its answer byte by byte is cut off at the deadline, not per socket read);
connection errors, timeouts, HTTP 5xx and 429 are retried ``retries`` times with
exponential backoff (``backoff * 2**attempt`` seconds, at most ``max_backoff``), so one
call waits at most about ``(retries + 1) * timeout`` plus the backoffs; HTTP 4xx is not
retried. An answer the client cannot use raises :class:`APIError` at once: not JSON,
NaN/Infinity, integers of more than 18 digits, nesting deeper than 32 levels, an answer over
``1 MiB + 32 bytes per image``, no ``labels`` list, a wrong number of labels, a
non-integer or out-of-range label, or an ``/info`` object with fields of the wrong type
(``num_classes`` an integer in [2, 2**20], ``in_shape`` three integers in [1, 65536],
``max_request_bytes`` an integer >= 4, ``protocol`` the string above, ``model_sha256`` /
``arch`` / ``denoiser`` / ``denoiser_sha256`` strings): a misbehaving endpoint must never
be turned into counts. Images with NaN or inf values are refused before sending.
Connections are kept alive, one per thread.

Server behaviour (:func:`make_server`): ``400`` for a missing, negative, non-integer or
repeated ``Content-Length``, a ``Transfer-Encoding`` body, a shape header that is not
``N,C,H,W`` of the served shape, a body whose length is not ``4*N*C*H*W``, or NaN/inf
pixels (values outside [0, 1] are accepted: noisy images are sent unclipped); ``413`` for a
``Content-Length`` over ``max_request_bytes``; after an error found before the body is
read the connection is closed (a body of valid length is read and dropped first, so the
answer is not lost to a connection reset). A connection that is idle, or whose request (line, headers and body) is not
fully received, ``timeout`` seconds (default 30) after the server began waiting for it is
closed, so slow or stalled clients cannot hold server threads. A label function that
returns the wrong number of labels or labels outside [0, K) gives ``500``.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from smoothguard.contract import (
    ContractError,
    check_int,
    check_labels,
    check_noisy_images,
    check_nonnegative,
    check_positive,
)

PROTOCOL = "smoothguard-labels/1"
SHAPE_HEADER = "X-Smoothguard-Shape"
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
DEFAULT_SERVER_TIMEOUT = 30.0
HOST = "127.0.0.1"
MAX_NUM_CLASSES = 1 << 20
MAX_SIDE = 1 << 16
MAX_INFO_BYTES = 1 << 20
_MAX_INT_DIGITS = 18  # every integer of the protocol fits in int64
_MAX_DEPTH = 32  # levels of nested lists/objects in an answer

LabelFunction = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) [0, 1] float -> (N,) int64


class APIError(ValueError):
    """The classifier endpoint failed or broke the protocol (the message says how).

    A ValueError, so the CLI reports it as an error message with exit code 2. ``status``
    is the HTTP status of a refused request (None when there was no usable answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Deadline:
    """Shuts a socket down ``seconds`` after it was started unless stopped first: every
    blocked read or write on it then returns at once (EOF / broken pipe), however slowly
    the other side drips bytes. Per-operation socket timeouts cannot do this."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                # the plain socket's shutdown: on an SSLSocket it also works mid-read
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def _expire(self) -> None:
        with self._lock:
            if not self._done:
                self.expired = True
                self._shutdown()

    def watch(self, sock: socket.socket | None) -> None:
        """The socket to shut down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown()

    def stop(self) -> bool:
        """Disarm; True when the deadline had already passed."""
        with self._lock:
            self._done = True
        self._timer.cancel()
        return self.expired


class HTTPClassifier:
    """A base classifier behind an HTTP endpoint speaking ``smoothguard-labels/1``.

    ``clf(x)`` sends the (N, C, H, W) float images ``x`` (any device) and returns int64
    labels (N,) on the CPU. Pass it to ``SmoothedClassifier(clf, num_classes, sigma)``.

    Args:
        url: ``http://host:port`` (optionally with a path prefix; ``https`` works too).
        num_classes: K; labels outside [0, K) raise :class:`APIError`. None: read it
            from ``GET /info`` on first use.
        timeout: deadline in seconds for one whole request attempt (> 0): connecting,
            sending and receiving the complete answer.
        retries: extra attempts after a connection error, timeout, 5xx or 429 (>= 0).
        backoff: first wait in seconds between attempts; doubled each time, at most
            ``max_backoff``.
        max_request_bytes: largest request body; batches are split to stay under it.
    """

    def __init__(self, url: str, num_classes: int | None = None, *, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 8.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        try:
            port_ok = parts is not None and (parts.port is None or parts.port > 0)
        except ValueError:  # a port that is not a number or out of range
            port_ok = False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ContractError(f"API URL must look like http://127.0.0.1:8000 (http or https, a host and "
                                f"optionally a port in 1..65535); got {url!r}")
        self.timeout = check_positive("timeout (seconds)", timeout)
        self.retries = check_int("retries", retries, minimum=0)
        self.backoff = check_nonnegative("backoff (seconds)", backoff)
        self.max_backoff = check_nonnegative("max_backoff (seconds)", max_backoff)
        self.max_request_bytes = check_int("max_request_bytes", max_request_bytes, minimum=4)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, 2, MAX_NUM_CLASSES)
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self.requests = 0  # successful requests so far (all threads)
        self.server_max_request_bytes: int | None = None  # from GET /info, once read
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
                 headers: dict[str, str] | None = None, max_answer: int = MAX_INFO_BYTES) -> bytes:
        """One request with retries, each attempt under the ``timeout`` deadline; returns
        the body of a 200 answer (at most ``max_answer`` bytes)."""
        where = f"{method} {self.url}{path}"
        last = ""
        attempt = 0
        stale_retry = True  # one free retry when a kept-alive connection turns out closed
        while attempt <= self.retries:
            if attempt and not last.startswith("stale"):
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            conn = self._connection()
            reused = conn.sock is not None
            deadline = _Deadline(self.timeout)
            try:
                if conn.sock is None:
                    conn.connect()
                deadline.watch(conn.sock)
                conn.request(method, self._prefix + path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read(max_answer + 1)
                status = resp.status
                closing = resp.getheader("Connection", "").lower() == "close" or len(data) > max_answer
                if len(data) <= max_answer and resp.length:  # EOF before Content-Length bytes arrived
                    raise http.client.IncompleteRead(data, resp.length)
                if deadline.stop():  # the socket was shut at the deadline: whatever came is cut short
                    raise TimeoutError()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                expired = deadline.stop()
                self._drop_connection()
                if expired or isinstance(exc, (socket.timeout, TimeoutError)):
                    last = f"timed out after {self.timeout:g} s (the deadline for one whole request)"
                elif reused and stale_retry and isinstance(exc, (http.client.RemoteDisconnected,
                                                                 ConnectionResetError, BrokenPipeError)):
                    stale_retry = False  # the server closed an idle kept-alive connection: retry at once
                    last = f"stale connection: {type(exc).__name__}: {exc}"
                    continue
                else:
                    last = f"connection failed: {type(exc).__name__}: {exc}"
                attempt += 1
                continue
            if closing:
                self._drop_connection()
            if len(data) > max_answer:
                raise APIError(f"{where}: the answer is larger than {max_answer} bytes; a "
                               f"{PROTOCOL} answer is much smaller", status)
            if status == 200:
                with self._lock:
                    self.requests += 1
                return data
            message = _error_message(data)
            self._drop_connection()  # after an error, start the next request on a fresh connection
            if status >= 500 or status == 429:
                last = f"HTTP {status}: {message}"
                attempt += 1
                continue
            raise APIError(f"{where}: HTTP {status}: {message}", status)
        raise APIError(f"{where} failed after {self.retries + 1} attempts; last: {last}")

    # ------------------------------------------------------------------ protocol
    def info(self) -> dict[str, Any]:
        """``GET /info``: the server's description (num_classes, in_shape, ...), its
        fields checked (see the module docstring)."""
        where = f"GET {self.url}/info"
        data = check_info(_parse_json(self._request("GET", "/info"), where), where)
        if data.get("max_request_bytes") is not None:  # requests are split to fit the server's limit too
            self.server_max_request_bytes = data["max_request_bytes"]
        return data

    def _num_classes(self) -> int:
        if self.num_classes is None:
            k = self.info().get("num_classes")
            if k is None:
                raise APIError(f"GET {self.url}/info does not state num_classes; pass num_classes "
                               "(CLI: --num-classes)")
            self.num_classes = k
        return self.num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # an autocast batch: sent as float32 like any other
        x = check_noisy_images(x, "the images sent to the API")
        k = self._num_classes()
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy(), dtype="<f4")
        per_image = int(np.prod(arr.shape[1:])) * 4
        limit = min(self.max_request_bytes, self.server_max_request_bytes or self.max_request_bytes)
        if per_image > limit:
            raise ContractError(f"one image takes {per_image} bytes, more than max_request_bytes={limit} "
                                + ("(the server's limit)" if limit < self.max_request_bytes
                                   else "(CLI: raise --api-max-request-mb)"))
        rows = max(1, limit // per_image)
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
        n = chunk.shape[0]
        raw = self._request("POST", "/predict", chunk.tobytes(), headers, max_answer=MAX_INFO_BYTES + 32 * n)
        data = _parse_json(raw, where)
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, list):
            raise APIError(f"{where}: expected a JSON object with a 'labels' list, got {_excerpt(raw)}")
        if len(labels) != n:
            raise APIError(f"{where}: sent {n} images, got {len(labels)} labels; expected one label per image")
        for v in labels:  # checked as Python values: a huge integer never reaches NumPy
            if not isinstance(v, int) or isinstance(v, bool):
                raise APIError(f"{where}: labels must be integers in [0, {k}), got {_excerpt(v)}")
            if not 0 <= v < k:
                raise APIError(f"{where}: label {v} is outside [0, {k}) (num_classes={k})")
        return np.asarray(labels, dtype=np.int64)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop_connection()


def _excerpt(value: Any, limit: int = 100) -> str:
    if isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[:limit]))
    elif isinstance(value, (list, dict)):
        text = f"a JSON {'list' if isinstance(value, list) else 'object'}"
    else:
        text = repr(value)[:limit]
    return text


def _error_message(data: bytes) -> str:
    try:
        obj = _parse_json(data, "")
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"][:500]
    except APIError:
        pass
    return data[:200].decode("utf-8", "replace") or "(empty body)"


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise APIError(f"an integer of {len(text.lstrip('-'))} digits (at most {_MAX_INT_DIGITS} are used)")
    return int(text)


def _json_constant(text: str) -> Any:
    raise APIError(f"{text} is not a JSON number")


def _too_deep(value: Any, limit: int = _MAX_DEPTH) -> bool:
    """Nested deeper than ``limit`` lists/objects (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (v.values() if isinstance(v, dict) else v))
    return False


def _parse_json(data: bytes, where: str) -> Any:
    """The JSON value of an answer; anything unusable (not JSON, NaN/Infinity, huge
    integers, nesting deeper than 32 levels) is an :class:`APIError`. (Deeper values
    would be copied into result sidecars, where reading them back could hit Python's
    recursion limit.)"""
    try:
        value = json.loads(data, parse_int=_json_int, parse_constant=_json_constant)
        if _too_deep(value):
            raise RecursionError
        return value
    except APIError as exc:
        raise APIError(f"{where}: malformed JSON in the answer: {exc}") from None
    except RecursionError:
        raise APIError(f"{where}: malformed JSON in the answer: nested too deeply (at most {_MAX_DEPTH} "
                       "levels)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise APIError(f"{where}: malformed JSON in the answer ({exc}): {_excerpt(data)}") from None


def check_info(data: Any, where: str = "GET /info") -> dict[str, Any]:
    """A ``GET /info`` answer with every field this package uses of the right type;
    fields it does not know are kept as they are."""
    if not isinstance(data, dict):
        raise APIError(f"{where}: expected a JSON object, got {_excerpt(data)}")
    protocol = data.get("protocol")
    if protocol is not None and protocol != PROTOCOL:
        raise APIError(f"{where}: the server speaks protocol {_excerpt(protocol)}; this client speaks {PROTOCOL}")

    def whole(key: str, lo: int, hi: int | None) -> None:
        v = data.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi)):
            allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
            raise APIError(f"{where}: {key} must be {allowed}, got {_excerpt(v)}")

    whole("num_classes", 2, MAX_NUM_CLASSES)
    whole("max_request_bytes", 4, None)
    shape = data.get("in_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in shape)):
        raise APIError(f"{where}: in_shape must be a list of 3 integers [C, H, W] in [1, {MAX_SIDE}], "
                       f"got {_excerpt(shape)}")
    for key in ("model", "model_sha256", "arch", "dataset", "denoiser", "denoiser_sha256"):
        v = data.get(key)
        if v is not None and not (isinstance(v, str) and len(v) <= 4096):
            raise APIError(f"{where}: {key} must be a string (at most 4096 characters) or null, got {_excerpt(v)}")
    return data


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    log: Callable[[str], None] | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away or the deadline cut it off
            if self.log is not None:
                self.log(f"{client_address[0]}:{client_address[1]}: connection closed ({type(exc).__name__})")
            return
        super().handle_error(request, client_address)


def make_server(
    label_fn: LabelFunction,
    num_classes: int,
    in_shape: Sequence[int],
    port: int = 0,
    *,
    max_request_bytes: int = 64 << 20,
    timeout: float = DEFAULT_SERVER_TIMEOUT,
    info: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server for ``label_fn`` speaking ``smoothguard-labels/1``, bound to
    127.0.0.1 only (port 0: an ephemeral port; read ``server.server_address[1]``).

    Requests are served in threads; ``label_fn`` is called under a lock, one batch at a
    time. ``timeout`` (seconds): a connection is closed when a request has not been
    received completely (request line, headers, body) that long after the server began
    waiting for it, idle keep-alive time included; the model's own time does not count.
    Run it with ``server.serve_forever()`` (e.g. in a thread) and stop it with
    ``server.shutdown(); server.server_close()``.
    """
    if not isinstance(in_shape, (list, tuple)) or len(in_shape) != 3:
        raise ContractError(f"in_shape must be (C, H, W), got {in_shape!r}")
    in_shape = tuple(check_int("in_shape entry", v, 1, MAX_SIDE) for v in in_shape)
    num_classes = check_int("num_classes", num_classes, 2, MAX_NUM_CLASSES)
    max_request_bytes = check_int("max_request_bytes", max_request_bytes, minimum=4)
    request_timeout = check_positive("timeout (seconds)", timeout)
    check_int("port", port, 0, 65535)
    description = {**(info or {}), "protocol": PROTOCOL, "num_classes": num_classes,
                   "in_shape": list(in_shape), "max_request_bytes": max_request_bytes}
    lock = threading.Lock()
    image_bytes = 4 * int(np.prod(in_shape))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
        # headers and body go out in two writes; with Nagle's algorithm the second waits for
        # the client's delayed ACK (~40 ms per request on Linux)
        disable_nagle_algorithm = True
        _deadline: _Deadline | None = None

        def log_message(self, fmt: str, *args: Any) -> None:
            if log is not None:
                log(fmt % args)

        def handle_one_request(self) -> None:
            # from the moment the server waits for a request until its body is read
            self._deadline = _Deadline(request_timeout)
            self._deadline.watch(self.connection)
            try:
                super().handle_one_request()
            finally:
                if self._deadline.stop():
                    self.close_connection = True

        def _received(self) -> bool:
            """The request is in: stop its deadline; False (and close) if it had passed."""
            if self._deadline is not None and self._deadline.stop():
                self.close_connection = True
                return False
            return True

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
            if not self._received():
                return
            if self.path.rstrip("/").endswith("/info") or self.path.rstrip("/") == "/info":
                self._send(200, description)
            else:
                self._send(404, {"error": f"unknown path {self.path}; use GET /info or POST /predict"})

        def _refuse(self, status: int, message: str, drain: int = 0) -> None:
            """An error answer before the body was read; the connection is closed after it.
            ``drain``: the declared body length (<= max_request_bytes), read and dropped after
            answering (under a fresh deadline) so that closing with unread data does not reset
            the connection and destroy the answer before a client sending its body reads it."""
            if not self._received():
                return
            self._send(status, {"error": message}, close=True)
            if drain:
                self.wfile.flush()
                deadline = _Deadline(request_timeout)
                deadline.watch(self.connection)
                try:
                    while drain > 0:
                        chunk = self.rfile.read1(min(drain, 1 << 16))
                        if not chunk:
                            break
                        drain -= len(chunk)
                except OSError:
                    pass
                finally:
                    deadline.stop()

        def do_POST(self) -> None:  # noqa: N802
            if self.headers.get("Transfer-Encoding") is not None:
                return self._refuse(400, "Transfer-Encoding is not supported; send the body with a "
                                         "Content-Length header")
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                return self._refuse(400, "Content-Length header missing; POST /predict needs "
                                         "Content-Length: 4*N*C*H*W")
            raw = lengths[0].strip()
            if len(set(v.strip() for v in lengths)) != 1 or not raw.isascii() or not raw.isdigit() \
                    or len(raw) > 18:
                return self._refuse(400, f"Content-Length must be one non-negative decimal integer "
                                         f"(at most max_request_bytes={max_request_bytes}); got "
                                         f"{', '.join(repr(v[:40]) for v in lengths)}")
            length = int(raw)
            if length > max_request_bytes:
                return self._refuse(413, f"body of {length} bytes exceeds max_request_bytes={max_request_bytes}")
            if not self.path.rstrip("/").endswith("/predict"):
                return self._refuse(404, f"unknown path {self.path}; use POST /predict", drain=length)
            header = self.headers.get(SHAPE_HEADER, "")
            try:
                shape = tuple(int(v) for v in header.split(",")) if len(header) <= 100 else ()
            except ValueError:
                shape = ()
            if len(shape) != 4 or shape[0] < 1 or shape[1:] != in_shape:
                return self._refuse(400, f"header {SHAPE_HEADER} must be N,{','.join(map(str, in_shape))} "
                                         f"with N >= 1; got {header[:100]!r}", drain=length)
            if length != shape[0] * image_bytes:
                return self._refuse(400, f"Content-Length is {length} bytes; shape {shape} as float32 needs "
                                         f"{shape[0] * image_bytes}", drain=length)
            try:
                body = self.rfile.read(length)
            except OSError:  # per-operation timeout or reset
                body = b""
            if not self._received() or len(body) != length:
                self.close_connection = True  # half-sent: nothing to answer
                return
            x = torch.from_numpy(np.frombuffer(body, dtype="<f4").astype(np.float32).reshape(shape))
            try:
                check_noisy_images(x, "the request's images")
            except ContractError as exc:
                return self._send(400, {"error": str(exc)})
            try:
                with lock:
                    labels = label_fn(x)
                labels = check_labels(torch.as_tensor(labels).reshape(-1), num_classes, count=shape[0],
                                      name="labels").tolist()
            except Exception as exc:  # noqa: BLE001 - report any model failure as HTTP 500
                return self._send(500, {"error": f"model failed: {type(exc).__name__}: {exc}"})
            self._send(200, {"labels": labels})

    # also per socket operation: bounds sending an answer to a client that does not read it
    Handler.timeout = request_timeout
    server = _Server((HOST, int(port)), Handler)
    server.log = log
    return server
