"""The HTTP door of the contract (issue 17, item 5): the client turns every answer it cannot
use into an APIError and keeps a deadline for the whole request; the server answers 400 to
bad requests and closes idle or half-sent connections; certify --api exits 2 with a
message and writes no row when the endpoint misbehaves."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from smoothguard.cli import main
from smoothguard.contract import ContractError
from smoothguard.models.remote import SHAPE_HEADER, APIError, HTTPClassifier, make_server

torch.set_num_threads(1)

GOOD_INFO = {"protocol": "smoothguard-labels/1", "num_classes": 10, "in_shape": [1, 28, 28],
             "max_request_bytes": 1 << 20}


# ------------------------------------------------------------------------- fake servers


class _Hostile(BaseHTTPRequestHandler):
    """Answers /info with ``info`` (bytes) and /predict with ``predict(n)`` (bytes)."""

    protocol_version = "HTTP/1.1"
    info = json.dumps(GOOD_INFO).encode()
    predict = staticmethod(lambda n: json.dumps({"labels": [0] * n}).encode())
    hits = 0

    def log_message(self, *args):
        pass

    def _answer(self, body: bytes, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        type(self).hits += 1
        self._answer(type(self).info)

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        n = int(self.headers[SHAPE_HEADER].split(",")[0])
        self._answer(type(self).predict(n))


def _serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def hostile():
    """(configure, url): configure(info=bytes, predict=callable) sets the answers."""
    handler = type("Handler", (_Hostile,), {})
    server, url = _serve(handler)

    def configure(info=None, predict=None):
        if info is not None:
            handler.info = info
        if predict is not None:
            handler.predict = staticmethod(predict)
        return handler

    yield configure, url
    server.shutdown()
    server.server_close()


def _nested(depth):
    return ("[" * depth + "]" * depth).encode()


HOSTILE_PREDICT = [
    ("huge_int", lambda n: b'{"labels": [' + b"9" * 5000 + b"]}", "digits"),
    ("int64_overflow", lambda n: json.dumps({"labels": [2 ** 70] * n}).encode(), "digits"),
    ("just_over_k", lambda n: json.dumps({"labels": [10] * n}).encode(), r"label 10 is outside \[0, 10\)"),
    ("minus_one", lambda n: json.dumps({"labels": [-1] * n}).encode(), r"label -1 is outside \[0, 10\)"),
    ("deep_nesting", lambda n: b'{"labels": ' + _nested(100000) + b"}", "nested too deeply"),
    ("nan", lambda n: b'{"labels": [NaN]}', "NaN is not a JSON number"),
    ("float", lambda n: json.dumps({"labels": [1.0] * n}).encode(), "must be integers"),
    ("bool", lambda n: json.dumps({"labels": [True] * n}).encode(), "must be integers"),
    ("string", lambda n: json.dumps({"labels": ["3"] * n}).encode(), "must be integers"),
    ("nested_label", lambda n: json.dumps({"labels": [[1]] * n}).encode(), "must be integers"),
    ("too_few", lambda n: json.dumps({"labels": [0] * (n - 1)}).encode(), "sent 2 images, got 1 labels"),
    ("too_many", lambda n: json.dumps({"labels": [0] * (n + 5)}).encode(), "sent 2 images, got 7 labels"),
    ("not_a_list", lambda n: json.dumps({"labels": {"0": 1}}).encode(), "'labels' list"),
    ("a_list", lambda n: json.dumps([0] * n).encode(), "'labels' list"),
    ("not_json", lambda n: b"<html>hello</html>", "malformed JSON"),
    ("not_utf8", lambda n: b"\xff\xfe\x00", "malformed JSON"),
    ("empty", lambda n: b"", "malformed JSON"),
    ("too_big", lambda n: b'{"labels": [0, 0], "pad": "' + b"x" * (2 << 20) + b'"}', "larger than"),
]


@pytest.mark.parametrize("name,predict,match", HOSTILE_PREDICT, ids=[c[0] for c in HOSTILE_PREDICT])
def test_every_unusable_predict_answer_is_an_api_error(hostile, name, predict, match):
    configure, url = hostile
    handler = configure(predict=predict)
    client = HTTPClassifier(url, 10, timeout=5, retries=3, backoff=0.01)
    with pytest.raises(APIError, match=match):
        client(torch.zeros(2, 1, 28, 28))
    assert handler.hits == 1  # a protocol violation is not retried


HOSTILE_INFO = [
    ("num_classes_str", {**GOOD_INFO, "num_classes": "10"}, "num_classes must be an integer in"),
    ("num_classes_float", {**GOOD_INFO, "num_classes": 10.0}, "num_classes must be an integer in"),
    ("num_classes_bool", {**GOOD_INFO, "num_classes": True}, "num_classes must be an integer in"),
    ("num_classes_one", {**GOOD_INFO, "num_classes": 1}, "num_classes must be an integer in"),
    ("num_classes_huge", {**GOOD_INFO, "num_classes": 10 ** 15}, "num_classes must be an integer in"),
    ("in_shape_int", {**GOOD_INFO, "in_shape": 784}, "in_shape must be a list of 3 integers"),
    ("in_shape_str", {**GOOD_INFO, "in_shape": "1,28,28"}, "in_shape must be a list of 3 integers"),
    ("in_shape_zero", {**GOOD_INFO, "in_shape": [1, 0, 28]}, "in_shape must be a list of 3 integers"),
    ("in_shape_nested", {**GOOD_INFO, "in_shape": [[1], 28, 28]}, "in_shape must be a list of 3 integers"),
    ("max_request_bytes", {**GOOD_INFO, "max_request_bytes": -1}, "max_request_bytes must be"),
    ("protocol", {**GOOD_INFO, "protocol": "other/2"}, "speaks protocol"),
    ("sha_dict", {**GOOD_INFO, "model_sha256": {"a": 1}}, "model_sha256 must be a string"),
    ("a_list", [GOOD_INFO], "expected a JSON object"),
    ("deep_extra", {**GOOD_INFO, "extra": json.loads(_nested(600))}, r"nested too deeply \(at most 32"),
]


@pytest.mark.parametrize("name,info,match", HOSTILE_INFO, ids=[c[0] for c in HOSTILE_INFO])
def test_wrong_types_in_info_are_an_api_error(hostile, name, info, match):
    configure, url = hostile
    configure(info=json.dumps(info).encode())
    with pytest.raises(APIError, match=match):
        HTTPClassifier(url, timeout=5).info()
    with pytest.raises(APIError, match=match):  # num_classes read from /info on first use
        HTTPClassifier(url, timeout=5)(torch.zeros(1, 1, 28, 28))


def test_a_good_answer_still_works(hostile):
    configure, url = hostile
    configure(predict=lambda n: json.dumps({"labels": list(range(n))}).encode())
    client = HTTPClassifier(url, timeout=5)
    assert client(torch.rand(3, 1, 28, 28)).tolist() == [0, 1, 2] and client.num_classes == 10
    # noisy images may leave [0, 1] (noise is never clipped), but never be NaN/inf
    assert client(torch.full((2, 1, 28, 28), -0.7)).tolist() == [0, 1]
    bad = torch.zeros(2, 1, 28, 28)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ContractError, match="non-finite"):
        client(bad)
    with pytest.raises(ContractError, match=r"\(N, C, H, W\)"):
        client(torch.zeros(1, 28, 28))


def test_client_constructor_checks_its_arguments():
    for kwargs, match in [({"timeout": 0}, "timeout"), ({"timeout": float("nan")}, "timeout"),
                          ({"retries": -1}, "retries"), ({"retries": 1.5}, "retries"),
                          ({"max_request_bytes": 2}, "max_request_bytes"), ({"backoff": -1}, "backoff")]:
        with pytest.raises(ContractError, match=match):
            HTTPClassifier("http://127.0.0.1:1", 10, **kwargs)
    for url in ("ftp://127.0.0.1:1", "127.0.0.1:8000", "http://127.0.0.1:notaport", "http://127.0.0.1:99999"):
        with pytest.raises(ContractError, match="API URL"):
            HTTPClassifier(url, 10)
    with pytest.raises(ContractError, match="num_classes"):
        HTTPClassifier("http://127.0.0.1:1", 1)


# ----------------------------------------------------------------- the whole-request deadline


class _Drip(BaseHTTPRequestHandler):
    """Sends a valid 200 answer one byte every 0.5 s (it would take ~30 s in all). Each
    answer, when the handler stops (the client went away, or all was sent), appends
    (bytes of the body sent, body length) to ``answers`` under ``done``."""

    protocol_version = "HTTP/1.1"
    done = threading.Condition()
    answers: list = []

    @classmethod
    def reset(cls):
        with cls.done:
            cls.answers = []

    @classmethod
    def wait_answers(cls, count):
        """The (sent, length) of ``count`` finished answers; a liveness guard of 120 s
        (a client that keeps reading finishes an answer after ~30 s), not a speed bound."""
        with cls.done:
            assert cls.done.wait_for(lambda: len(cls.answers) >= count, timeout=120)
            return list(cls.answers)

    def log_message(self, *args):
        pass

    def do_GET(self):  # /info answers at once
        body = json.dumps(GOOD_INFO).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        n = int(self.headers[SHAPE_HEADER].split(",")[0])
        body = json.dumps({"labels": [0] * n, "pad": " " * 40}).encode()
        self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        self.wfile.flush()
        sent = 0
        try:
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                sent += 1
                time.sleep(0.5)
        except OSError:  # the client gave up
            pass
        with self.done:
            self.answers.append((sent, len(body)))
            self.done.notify_all()


def test_a_server_that_drips_bytes_cannot_hold_the_client_past_the_deadline():
    _Drip.reset()
    server, url = _serve(_Drip)
    try:
        client = HTTPClassifier(url, 10, timeout=1.0, retries=1, backoff=0.01)
        with pytest.raises(APIError, match=r"failed after 2 attempts; last: timed out after 1 s"):
            client(torch.zeros(2, 1, 28, 28))
        # each byte arrives well within a per-read timeout of 1 s: only a whole-request
        # deadline cuts the answer off. Checked on bytes, not on a clock: the client hung up
        # on both attempts before the server could send the whole body (a client that read
        # on to the end and only then reported the time-out would let both answers finish)
        answers = _Drip.wait_answers(2)
        assert len(answers) == 2 and all(sent < length for sent, length in answers), answers
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------ the server's 400s


@pytest.fixture
def our_server():
    calls = []

    def labels(x):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], dtype=torch.int64)

    server = make_server(labels, 10, (1, 28, 28), max_request_bytes=8 * 3136, timeout=1.0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1], calls
    server.shutdown()
    server.server_close()


def _raw(port, request: bytes, timeout=10.0) -> bytes:
    """Sends ``request`` on a fresh socket and reads until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)  # all sent: a server draining a declared body sees its end
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def _post(headers: dict, body: bytes = b"") -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


ONE_IMAGE = {SHAPE_HEADER: "1,1,28,28"}
BAD_LENGTHS = [
    ("missing", {}, "Content-Length header missing"),
    ("negative", {"Content-Length": "-3136"}, "non-negative decimal integer"),
    ("non_integer", {"Content-Length": "3136.0"}, "non-negative decimal integer"),
    ("text", {"Content-Length": "lots"}, "non-negative decimal integer"),
    ("huge", {"Content-Length": "9" * 40}, "non-negative decimal integer"),
    ("wrong_for_shape", {"Content-Length": "3132"}, "needs 3136"),
]


@pytest.mark.parametrize("name,headers,match", BAD_LENGTHS, ids=[c[0] for c in BAD_LENGTHS])
def test_the_server_answers_400_to_a_bad_content_length(our_server, name, headers, match):
    port, calls = our_server
    answer = _raw(port, _post({**ONE_IMAGE, **headers}))  # no body sent: the server must not wait for one
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Connection: close" in head
    assert match in json.loads(body)["error"]
    assert calls == []


def test_the_server_answers_413_over_its_limit_and_400_to_a_bad_shape(our_server):
    port, calls = our_server
    head = _raw(port, _post({SHAPE_HEADER: "100,1,28,28", "Content-Length": str(100 * 3136)}))
    assert head.startswith(b"HTTP/1.1 413")
    for shape in ("1,3,28,28", "0,1,28,28", "1,1,28", "a,b,c,d", "1," * 2000 + "1"):
        answer = _raw(port, _post({SHAPE_HEADER: shape, "Content-Length": "3136"}))
        assert answer.startswith(b"HTTP/1.1 400"), (shape, answer[:100])
    assert calls == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_server_answers_400_to_non_finite_pixels(our_server, value):
    port, calls = our_server
    x = torch.zeros(2, 1, 28, 28)
    x[1, 0, 5, 5] = value
    body = x.numpy().astype("<f4").tobytes()
    answer = _raw(port, _post({SHAPE_HEADER: "2,1,28,28", "Content-Length": str(len(body)),
                               "Connection": "close"}, body))
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and "non-finite" in json.loads(payload)["error"]
    assert calls == []
    # noisy values outside [0, 1] are the protocol's normal case and are answered
    body = torch.full((1, 1, 28, 28), 1.8).numpy().astype("<f4").tobytes()
    answer = _raw(port, _post({**ONE_IMAGE, "Content-Length": "3136", "Connection": "close"}, body))
    assert answer.startswith(b"HTTP/1.1 200") and calls == [1]


def test_a_large_refused_request_still_gets_its_400_answer():
    """The server refuses a wrong shape before reading the body; it must still read and drop
    the body, or closing with megabytes unread resets the connection and the client never
    sees why."""
    server = make_server(lambda x: torch.zeros(x.shape[0], dtype=torch.int64), 10, (1, 28, 28), timeout=10)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        client = HTTPClassifier(f"http://127.0.0.1:{server.server_address[1]}", 10, retries=0,
                                max_request_bytes=16 << 20)
        with pytest.raises(APIError, match=r"HTTP 400: header X-Smoothguard-Shape must be N,1,28,28"):
            client(torch.zeros(3000, 1, 28, 29))  # 9.7 MB
        assert client(torch.zeros(1, 1, 28, 28)).tolist() == [0]
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_splits_batches_under_the_limit_the_server_states(our_server):
    port, calls = our_server  # the server takes at most 8 images per request
    client = HTTPClassifier(f"http://127.0.0.1:{port}", 10)
    assert client.info()["max_request_bytes"] == 8 * 3136
    assert client(torch.zeros(20, 1, 28, 28)).tolist() == [0] * 20  # not a 413
    assert calls == [8, 8, 4]


def test_a_label_function_with_bad_labels_gives_500():
    server = make_server(lambda x: torch.full((x.shape[0],), 12), 10, (1, 28, 28), timeout=5)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        client = HTTPClassifier(f"http://127.0.0.1:{server.server_address[1]}", 10, retries=0)
        with pytest.raises(APIError, match=r"HTTP 500: model failed.*\[0, 10\)"):
            client(torch.zeros(1, 1, 28, 28))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("what", ["idle", "half_headers", "half_body"])
def test_the_server_closes_idle_and_half_sent_connections(our_server, what):
    port, calls = our_server  # the server's timeout is 1 s
    partial = {"idle": b"",
               "half_headers": b"POST /predict HTTP/1.1\r\nHost: x\r\n",
               "half_body": _post({**ONE_IMAGE, "Content-Length": "3136"}, b"\0" * 1000)}[what]
    # a server that never closed would leave recv waiting: the socket's 60 s timeout then
    # fails the test (a liveness guard far above the server's 1 s, not a speed bound)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(partial)
        assert s.recv(65536) == b""  # closed by the server, nothing answered
    assert calls == []


def test_a_slowly_dripped_request_is_cut_off_at_the_deadline(our_server):
    port, calls = our_server  # timeout 1 s; one byte per 0.2 s, each well within a read timeout
    request = _post({**ONE_IMAGE, "Content-Length": "3136"}, b"\0" * 3136)
    # the client stops after 300 of the request's 3,300 bytes (>= 60 s) at the latest: a
    # server without a whole-request deadline keeps waiting for the rest and is never seen
    # closing; a deadline closes it after ~5 bytes (condition on bytes sent, not on a clock)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        closed = False
        for i in range(300):
            try:
                s.sendall(request[i:i + 1])
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            s.setblocking(False)
            try:
                closed = s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            s.setblocking(True)
            if closed:
                break
        assert closed and i < 299
    assert calls == []


def test_keep_alive_still_works_and_the_client_survives_an_idle_close(our_server):
    port, calls = our_server
    client = HTTPClassifier(f"http://127.0.0.1:{port}", 10, retries=0)
    assert client(torch.zeros(2, 1, 28, 28)).tolist() == [0, 0]
    assert client(torch.zeros(1, 1, 28, 28)).tolist() == [0]  # same connection
    sock = client._local.conn.sock
    sock.settimeout(15)
    assert sock.recv(1, socket.MSG_PEEK) == b""  # the server closed the idle connection (after 1 s)
    assert client(torch.zeros(1, 1, 28, 28)).tolist() == [0]  # reconnects without using a retry
    assert calls == [2, 1, 1]


def test_make_server_checks_its_arguments():
    fn = lambda x: torch.zeros(x.shape[0], dtype=torch.int64)  # noqa: E731
    for kwargs, match in [({"timeout": 0}, "timeout"), ({"timeout": float("inf")}, "timeout"),
                          ({"max_request_bytes": 0}, "max_request_bytes")]:
        with pytest.raises(ContractError, match=match):
            make_server(fn, 10, (1, 28, 28), **kwargs)
    with pytest.raises(ContractError, match="in_shape"):
        make_server(fn, 10, (28, 28))
    with pytest.raises(ContractError, match="num_classes"):
        make_server(fn, 1, (1, 28, 28))


# ------------------------------------------------------------------------------- the CLI


CLI_CASES = [
    ("info_bad_type", {"info": json.dumps({**GOOD_INFO, "num_classes": "ten"}).encode()},
     "num_classes must be an integer"),
    ("info_deep", {"info": _nested(100000)}, "nested too deeply"),
    ("labels_minus_one", {"predict": lambda n: json.dumps({"labels": [-1] * n}).encode()},
     r"label -1 is outside [0, 10)"),
    ("labels_huge", {"predict": lambda n: json.dumps({"labels": [10 ** 30] * n}).encode()}, "digits"),
    ("labels_count", {"predict": lambda n: json.dumps({"labels": [0] * (n + 1)}).encode()}, "labels; expected one"),
    ("info_five_classes", {"info": json.dumps({**GOOD_INFO, "num_classes": 5}).encode()},
     "has 5 classes but --data demo has 10"),
]


@pytest.mark.parametrize("name,answers,match", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_certify_api_against_a_hostile_endpoint_exits_2_and_writes_no_row(hostile, tmp_path, capsys, name,
                                                                          answers, match):
    configure, url = hostile
    configure(**answers)
    out = tmp_path / "cert.tsv"
    rc = main(["certify", "--api", url, "--max", "1", "--n0", "10", "--n", "20", "--threads", "1",
               "--device", "cpu", "--api-retries", "0", "--api-timeout", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and match in err and "Traceback" not in err
    assert not out.exists() or not [line for line in out.read_text().splitlines()
                                    if line and not line.startswith(("idx", "#"))]


def test_certify_api_timeout_flag_is_a_whole_request_deadline(tmp_path, capsys):
    server, url = _serve(_Drip)
    try:
        out = tmp_path / "cert.tsv"
        _Drip.reset()
        rc = main(["certify", "--api", url, "--max", "1", "--n0", "10", "--n", "20", "--threads", "1",
                   "--device", "cpu", "--api-retries", "0", "--api-timeout", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and "timed out after 1 s" in err and "Traceback" not in err
        # the one attempt was cut off before the whole answer arrived (bytes, not a clock)
        answers = _Drip.wait_answers(1)
        assert len(answers) == 1 and answers[0][0] < answers[0][1], answers
        assert not out.exists() or not [line for line in out.read_text().splitlines()
                                        if line and not line.startswith(("idx", "#"))]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [404, 500])
def test_certify_api_accepts_an_endpoint_without_info_but_not_a_failing_one(hostile, tmp_path, capsys, status):
    configure, url = hostile
    handler = configure()

    def no_info(self):
        self._answer(b'{"error": "no such path"}', status)

    handler.do_GET = no_info
    out = tmp_path / "cert.tsv"
    rc = main(["certify", "--api", url, "--max", "1", "--n0", "10", "--n", "20", "--threads", "1",
               "--device", "cpu", "--api-retries", "0", "--out", str(out)])
    err = capsys.readouterr().err
    if status == 404:  # a label-only endpoint need not describe itself: num_classes from the data
        assert rc == 0, err
        assert len([line for line in out.read_text().splitlines() if line and not line.startswith("idx")]) == 1
    else:
        assert rc == 2 and "HTTP 500" in err and "Traceback" not in err


@pytest.mark.parametrize("flags,match", [
    (["--api-timeout", "0"], "--api-timeout"),
    (["--api-timeout", "nan"], "--api-timeout"),
    (["--api-retries", "-1"], "--api-retries"),
    (["--num-classes", "1"], "--num-classes"),
])
def test_certify_api_flags_are_checked(hostile, tmp_path, capsys, flags, match):
    _, url = hostile
    out = tmp_path / "cert.tsv"
    rc = main(["certify", "--api", url, "--max", "1", "--n0", "10", "--n", "20", "--device", "cpu", *flags,
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err and not out.exists()


def test_serve_checks_its_flags(capsys):
    for flags, match in ((["--request-timeout", "0"], "--request-timeout"), (["--port", "70000"], "--port")):
        assert main(["serve", *flags]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["", "ftp://127.0.0.1:1", "127.0.0.1:8000"])
def test_certify_api_refuses_an_empty_or_malformed_url(tmp_path, capsys, url):
    out = tmp_path / "cert.tsv"
    rc = main(["certify", "--api", url, "--max", "1", "--n0", "10", "--n", "20", "--device", "cpu",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--api: API URL must look like http://127.0.0.1:8000" in err and "Traceback" not in err
    assert not out.exists()
