"""``smoothguard serve``: expose a checkpoint as a query-only classifier over HTTP (127.0.0.1)."""

from __future__ import annotations

import argparse
import json
import sys

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


def run(args: argparse.Namespace) -> int:
    from smoothguard.cli.common import load_model_arg
    from smoothguard.contract import check_int, check_output_path, check_positive, write_text_atomic
    from smoothguard.models.remote import make_server, model_labels

    check_int("--port (0: any free port)", args.port, 0, 65535)
    check_positive("--max-request-mb", args.max_request_mb)
    check_positive("--request-timeout (seconds)", args.request_timeout)
    if args.ready_file:
        check_output_path(args.ready_file, "--ready-file")
    model, meta = load_model_arg(args.model, args.device, args.model_factory, args.weights)
    if meta.get("kind", "classifier") != "classifier":
        raise ValueError(f"--model {args.model} is a {meta.get('kind')!r} checkpoint; serve needs a classifier")
    from smoothguard.cli.attack import model_settings

    model_name, model_sha = model_settings(args.model, args.model_factory, args.weights)
    info = {"model": model_name,
            "model_sha256": model_sha, "arch": meta.get("arch"), "dataset": meta.get("dataset"),
            "denoiser": None, "denoiser_sha256": None}
    if args.denoiser:
        from smoothguard.cli._denoised import load_denoiser_arg

        model, den_settings = load_denoiser_arg(args.denoiser, model, meta["in_shape"], args.device)
        info.update(den_settings)
    server = make_server(model_labels(model), meta["num_classes"], meta["in_shape"], args.port,
                         max_request_bytes=max(4, int(args.max_request_mb * (1 << 20))),
                         timeout=args.request_timeout, info=info,
                         log=(lambda line: print(line, file=sys.stderr)) if args.log_requests else None)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    print(f"serving {info['model']}" + (f" behind denoiser {info['denoiser']}" if args.denoiser else "")
          + f" at {url} (GET /info, POST /predict); Ctrl-C stops", file=sys.stderr, flush=True)
    print(json.dumps({"url": url, **info}), flush=True)
    if args.ready_file:
        try:
            write_text_atomic(args.ready_file, url + "\n", "--ready-file")
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
