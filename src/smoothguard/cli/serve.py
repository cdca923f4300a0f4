"""``smoothguard serve``: expose a checkpoint as a query-only classifier over HTTP (127.0.0.1)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

HELP = "serve a checkpoint as a label-only HTTP API on 127.0.0.1 (for certify --api)"
DESCRIPTION = (
    "Serve a classifier (optionally behind a denoiser: labels of f(D(x))) through the smoothguard-labels/1 "
    "protocol on 127.0.0.1 only: GET /info, POST /predict with float32 N,C,H,W images, answer "
    "{\"labels\": [...]} (the protocol is documented in smoothguard.models.remote). "
    "Then: smoothguard certify --api http://127.0.0.1:PORT ... Stop with Ctrl-C or SIGTERM."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="classifier checkpoint (default: the embedded model)")
    from smoothguard.cli.common import add_model_factory_arguments

    add_model_factory_arguments(p)
    p.add_argument("--denoiser", default=None, help="denoiser checkpoint: serve the labels of model(denoiser(x))")
    p.add_argument("--port", type=int, default=8000, help="TCP port on 127.0.0.1 (0: any free port)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body accepted (MiB); larger: 413")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="close a connection whose request (line, headers, body) has not fully arrived this many "
                        "seconds after the server began waiting for it (idle keep-alive time included; the "
                        "model's time is not counted), so stalled or slow clients cannot hold server threads")
    p.add_argument("--ready-file", default=None,
                   help="write the server's URL to this file once it listens (for scripts using --port 0)")
    p.add_argument("--log-requests", action="store_true", help="print one line per request on stderr")


def validate(args: argparse.Namespace) -> None:
    """The option checks that need no model (also run on ``smoothguard run`` steps)."""
    from smoothguard.contract import check_int, check_output_path, check_positive

    check_int("--port (0: any free port)", args.port, 0, 65535)
    check_positive("--max-request-mb", args.max_request_mb)
    check_positive("--request-timeout (seconds)", args.request_timeout)
    if args.ready_file:
        check_output_path(args.ready_file, "--ready-file")


@dataclass(frozen=True)
class ServeOptions:
    """What ``smoothguard serve`` does: serve the labels of ``model`` (a checkpoint, the
    embedded model when None, or ``model_factory`` with ``weights``), behind ``denoiser`` if
    given, on 127.0.0.1:``port`` (0: any free port), with requests of at most
    ``max_request_mb`` MiB that must arrive within ``request_timeout`` seconds; the URL is
    written to ``ready_file`` once it listens; ``log_requests`` prints a line per request."""

    model: str | None = None
    model_factory: str | None = None
    weights: str | None = None
    denoiser: str | None = None
    port: int = 8000
    max_request_mb: float = 64.0
    request_timeout: float = 30.0
    ready_file: str | None = None
    log_requests: bool = False
    device: Any = "cpu"


def options(args: argparse.Namespace) -> ServeOptions:
    """The checked, typed options of the command line."""
    validate(args)
    return ServeOptions(model=args.model, model_factory=args.model_factory, weights=args.weights,
                        denoiser=args.denoiser, port=args.port, max_request_mb=args.max_request_mb,
                        request_timeout=args.request_timeout, ready_file=args.ready_file,
                        log_requests=args.log_requests, device=args.device)


def run(args: argparse.Namespace) -> int:
    return serve(options(args))


def serve(opts: ServeOptions) -> int:
    """Load the model and serve it until Ctrl-C / SIGTERM: the exit code."""
    from smoothguard.cli.common import load_model_arg
    from smoothguard.contract import write_text_atomic
    from smoothguard.models.remote import make_server, model_labels

    model, meta = load_model_arg(opts.model, opts.device, opts.model_factory, opts.weights)
    if meta.get("kind", "classifier") != "classifier":
        raise ValueError(f"--model {opts.model} is a {meta.get('kind')!r} checkpoint; serve needs a classifier")
    from smoothguard.cli.attack import model_settings

    model_name, model_sha = model_settings(opts.model, opts.model_factory, opts.weights)
    info = {"model": model_name,
            "model_sha256": model_sha, "arch": meta.get("arch"), "dataset": meta.get("dataset"),
            "denoiser": None, "denoiser_sha256": None}
    if opts.denoiser:
        from smoothguard.cli._denoised import load_denoiser_arg

        model, den_settings = load_denoiser_arg(opts.denoiser, model, meta["in_shape"], opts.device)
        info.update(den_settings)
    server = make_server(model_labels(model), meta["num_classes"], meta["in_shape"], opts.port,
                         max_request_bytes=max(4, int(opts.max_request_mb * (1 << 20))),
                         timeout=opts.request_timeout, info=info,
                         log=(lambda line: print(line, file=sys.stderr)) if opts.log_requests else None)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    print(f"serving {info['model']}" + (f" behind denoiser {info['denoiser']}" if opts.denoiser else "")
          + f" at {url} (GET /info, POST /predict); Ctrl-C stops", file=sys.stderr, flush=True)
    print(json.dumps({"url": url, **info}), flush=True)
    if opts.ready_file:
        try:
            write_text_atomic(opts.ready_file, url + "\n", "--ready-file")
        except BaseException:
            server.server_close()
            raise
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
