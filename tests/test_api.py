"""Query-only classifiers: label functions, the HTTP client/server protocol, its failure
modes, and certify --api against smoothguard serve."""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from smoothguard.cli import main
from smoothguard.data import load_dataset
from smoothguard.models import get_denoiser, load_default_model, save_checkpoint
from smoothguard.models.remote import SHAPE_HEADER, APIError, HTTPClassifier, make_server, model_labels
from smoothguard.smoothing import SmoothedClassifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load_default_model()[0]


@pytest.fixture(scope="module")
def images():
    return load_dataset("demo", "test").images[:3]


@pytest.fixture(scope="module")
def server_url(model):
    server = make_server(model_labels(model), 10, (1, 28, 28), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()


def _certify(base, x, **kw):
    g = SmoothedClassifier(base, 10, 0.25, **kw)
    return g.certify_batch(x, n0=100, n=1000, alpha=0.001, batch_size=400, seeds=[11, 12, 13])


def test_http_certificate_equals_the_in_process_one_under_the_same_seed(model, images, server_url):
    local = _certify(model, images, memory_format="contiguous")
    client = HTTPClassifier(server_url, 10)
    remote = _certify(client, images)
    assert torch.equal(local.counts_selection, remote.counts_selection)
    assert torch.equal(local.counts_estimation, remote.counts_estimation)
    assert torch.equal(local.prediction, remote.prediction) and torch.equal(local.radius, remote.radius)
    assert client.requests > 0 and server_url.startswith("http://127.0.0.1:")
    # the counts are not degenerate: at least one image is certified with a positive radius
    assert (local.radius > 0).any()


def test_a_python_label_function_is_a_base_classifier(model, images):
    local = _certify(model, images, memory_format="contiguous")
    fn = _certify(lambda x: model(x).argmax(1), images)
    assert torch.equal(local.counts_estimation, fn.counts_estimation)


@pytest.mark.parametrize("labels_fn,match", [
    (lambda x: torch.full((x.shape[0],), 10), r"outside \[0, 10\)"),
    (lambda x: torch.full((x.shape[0],), -1), r"outside \[0, 10\)"),
    (lambda x: torch.zeros(x.shape[0]), "dtype"),
    (lambda x: torch.zeros(x.shape[0] - 1, dtype=torch.int64), "outputs for"),
])
def test_a_label_function_returning_bad_labels_is_refused(images, labels_fn, match):
    with pytest.raises(ValueError, match=match):
        SmoothedClassifier(labels_fn, 10, 0.25).sample_counts(images[:1], 50, seeds=[0])


def test_batches_are_split_under_the_request_size_limit(server_url, model, images):
    x = torch.cat([images] * 4)  # 12 images of 3136 bytes
    client = HTTPClassifier(server_url, 10, max_request_bytes=5 * 3136)
    labels = client(x)
    assert client.requests == 3  # 5 + 5 + 2
    assert torch.equal(labels, model(x).argmax(1))
    with pytest.raises(ValueError, match="max_request_bytes"):
        HTTPClassifier(server_url, 10, max_request_bytes=100)(x)


def test_the_client_reads_num_classes_from_info(server_url, images):
    client = HTTPClassifier(server_url)
    assert client(images).shape == (3,) and client.num_classes == 10
    assert client.info()["in_shape"] == [1, 28, 28]


# ----------------------------------------------------------------- misbehaving servers


class _Bad(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "ok"
    hits = 0
    release: threading.Event  # a "timeout" answer waits for it: never before the client gives up

    def log_message(self, *args):
        pass

    def _answer(self, status, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = int(self.headers[SHAPE_HEADER].split(",")[0])
        cls = type(self)
        cls.hits += 1
        mode = cls.mode
        if mode == "500_then_ok" and cls.hits == 1 or mode == "500":
            return self._answer(500, b'{"error": "overloaded"}')
        if mode == "400":
            return self._answer(400, b'{"error": "bad shape"}')
        if mode == "timeout":
            cls.release.wait(60)  # not a sleep: no load can make this answer arrive in time
        labels = [0] * n
        if mode == "wrong_count":
            labels = [0] * (n + 1)
        elif mode == "non_integer":
            labels = [0.5] * n
        elif mode == "out_of_range":
            labels = [10] * n
        elif mode == "malformed":
            return self._answer(200, b'{"labels": [0, 0')
        assert len(body) == 4 * n * 28 * 28
        self._answer(200, json.dumps({"labels": labels}).encode())


@pytest.fixture
def bad_server():
    handler = type("Handler", (_Bad,), {"mode": "ok", "hits": 0, "release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    handler.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode,match,hits", [
    ("wrong_count", "sent 2 images, got 3 labels", 1),
    ("non_integer", r"labels must be integers in \[0, 10\), got 0.5", 1),
    ("out_of_range", r"label 10 is outside \[0, 10\)", 1),
    ("malformed", "malformed JSON", 1),
    ("400", "HTTP 400: bad shape", 1),  # a client error is not retried
    ("500", "failed after 3 attempts; last: HTTP 500: overloaded", 3),
    ("timeout", "timed out after 0.2 s", 2),
])
def test_each_misbehaving_endpoint_gives_its_error(bad_server, mode, match, hits):
    handler, url = bad_server
    handler.mode = mode
    retries = 1 if mode == "timeout" else 2
    client = HTTPClassifier(url, 10, timeout=0.2, retries=retries, backoff=0.01)
    with pytest.raises(APIError, match=match):
        client(torch.zeros(2, 1, 28, 28))
    if mode == "timeout":
        # the client gave up on a request the server may not have read yet: wait for it
        # (on a condition, not a time: the deadline only bounds a hang)
        deadline = time.monotonic() + 60
        while handler.hits < hits and time.monotonic() < deadline:
            time.sleep(0.01)
    assert handler.hits == hits


def test_http_500_then_success_is_retried(bad_server):
    handler, url = bad_server
    handler.mode = "500_then_ok"
    client = HTTPClassifier(url, 10, retries=2, backoff=0.01)
    assert client(torch.zeros(2, 1, 28, 28)).tolist() == [0, 0]
    assert handler.hits == 2


def test_connection_refused_is_retried_then_reported():
    import socket

    with socket.socket() as s:  # a free port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HTTPClassifier(f"http://127.0.0.1:{port}", 10, retries=1, backoff=0.01)
    with pytest.raises(APIError, match="failed after 2 attempts; last: connection failed"):
        client(torch.zeros(1, 1, 28, 28))


def test_the_server_refuses_oversized_and_malformed_requests(server_url):
    import http.client

    conn = http.client.HTTPConnection(server_url.split("//")[1])
    conn.request("POST", "/predict", body=b"\0" * 8, headers={SHAPE_HEADER: "1,1,28,28"})
    resp = conn.getresponse()
    assert resp.status == 400 and "needs 3136" in json.loads(resp.read())["error"]
    with pytest.raises(APIError, match="HTTP 400"):
        HTTPClassifier(server_url, 10)(torch.zeros(1, 3, 28, 28))  # wrong shape for this model
    small = make_server(lambda x: torch.zeros(x.shape[0], dtype=torch.int64), 10, (1, 28, 28),
                        max_request_bytes=4 * 784)
    threading.Thread(target=small.serve_forever, daemon=True).start()
    try:
        client = HTTPClassifier(f"http://127.0.0.1:{small.server_address[1]}", 10)
        with pytest.raises(APIError, match="HTTP 413"):
            client(torch.zeros(2, 1, 28, 28))
        assert client(torch.zeros(1, 1, 28, 28)).tolist() == [0]  # a fresh connection after the 413
    finally:
        small.shutdown()
        small.server_close()


# ----------------------------------------------------------------- CLI: serve + certify --api


def test_certify_api_against_smoothguard_serve_matches_certify_model(tmp_path, capsys):
    den = get_denoiser("dncnn", (1, 28, 28), depth=2, width=4)
    with torch.no_grad():
        den.net[-1].weight.normal_(0, 0.05)
    den_path = tmp_path / "den.pt"
    save_checkpoint(den_path, den, {"kind": "denoiser", "arch": "dncnn", "in_shape": [1, 28, 28],
                                    "model_options": {"depth": 2, "width": 4}})
    ready = tmp_path / "url"
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "smoothguard", "serve", "--port", "0", "--threads", "1",
                             "--device", "cpu", "--ready-file", str(ready)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "smoothguard serve did not start"
            time.sleep(0.1)
        url = ready.read_text().strip()
        common = ["certify", "--max", "3", "--skip", "5", "--n", "500", "--threads", "1", "--no-jit",
                  "--device", "cpu"]
        rows = {}
        for name, extra in (("local", []), ("api", ["--api", url]),
                            ("local_den", ["--denoiser", str(den_path)]),
                            ("api_den", ["--api", url, "--denoiser", str(den_path)])):
            out = tmp_path / f"{name}.tsv"
            assert main([*common, *extra, "--out", str(out)]) == 0
            rows[name] = [line.split("\t")[:5] for line in out.read_text().splitlines()]
        assert rows["api"] == rows["local"] and rows["api_den"] == rows["local_den"]
        side = json.loads((tmp_path / "api_den.tsv.json").read_text())["settings"]
        assert side["api"] == url and side["model"] == "api:" + url
        assert side["api_info"]["model"].startswith("embedded:") and side["denoiser"] == str(den_path.resolve())
        assert side["model_sha256"] == side["api_info"]["model_sha256"]
        assert main([*common, "--api", url, "--num-classes", "7", "--out", str(tmp_path / "k.tsv")]) == 2
        capsys.readouterr()
        assert main(["analyze", str(tmp_path / "api_den.tsv"), "--no-plot"]) == 0
        assert "api:127.0.0.1:" in capsys.readouterr().out
    finally:
        proc.terminate()
        proc.wait(timeout=30)
