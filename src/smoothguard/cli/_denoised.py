"""CLI helpers for denoised smoothing (``--denoiser``) and query-only classifiers (``--api``)
shared by ``certify``, ``predict`` and ``serve``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn


def add_query_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("denoised smoothing and query-only classifiers")
    g.add_argument("--denoiser", default=None,
                   help="denoiser checkpoint (smoothguard train-denoiser): smooth x -> f(D(x)); the noise is added "
                        "before D")
    g.add_argument("--api", default=None, metavar="URL",
                   help="use the label-only classifier served at URL (smoothguard serve; protocol "
                        "smoothguard-labels/1) instead of --model")
    g.add_argument("--num-classes", type=int, default=None,
                   help="--api: number of classes (default: the server's GET /info, else the dataset's)")
    g.add_argument("--in-shape", default=None, metavar="C,H,W",
                   help="--api: input shape the endpoint expects (default: the dataset's; checked against it)")
    g.add_argument("--api-timeout", type=float, default=30.0,
                   help="--api: deadline in seconds for one whole request (connect, send, complete answer) "
                        "before it is retried")
    g.add_argument("--api-retries", type=int, default=4,
                   help="--api: retries after connection errors, timeouts and HTTP 5xx (exponential backoff)")
    g.add_argument("--api-max-request-mb", type=float, default=4.0,
                   help="--api: largest request body in MiB; bigger batches are split")


def load_denoiser(path: str, in_shape: Sequence[int], device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Load a denoiser checkpoint for images of ``in_shape``; returns (denoiser, settings
    recorded in result sidecars)."""
    from smoothguard.evaluation.resultfile import file_sha256
    from smoothguard.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint

    kind = read_checkpoint(path)["meta"].get("kind", "classifier")
    if kind != "denoiser":
        raise CheckpointError(f"--denoiser {path} is a {kind} checkpoint, not a denoiser "
                              "(train one with smoothguard train-denoiser)")
    den, meta = load_checkpoint(path, device, kind="denoiser")
    if tuple(meta["in_shape"]) != tuple(int(v) for v in in_shape):
        raise CheckpointError(f"--denoiser {path} denoises {tuple(meta['in_shape'])} images; the classifier takes "
                         f"{tuple(in_shape)}")
    settings = {"denoiser": str(Path(path).resolve()), "denoiser_sha256": file_sha256(path),
                "denoiser_arch": meta.get("arch"), "denoiser_objective": meta.get("objective"),
                "denoiser_noise_sd": meta.get("noise_sd"), "denoiser_black_box": meta.get("black_box")}
    return den, settings


def load_denoiser_arg(path: str, classifier: nn.Module, in_shape: Sequence[int],
                      device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """``DenoisedClassifier(classifier, denoiser)`` and the denoiser's settings."""
    from smoothguard.models import DenoisedClassifier

    den, settings = load_denoiser(path, in_shape, device)
    return DenoisedClassifier(classifier, den).eval(), settings


def denoised_labels(denoiser: nn.Module, label_fn: Callable[[torch.Tensor], torch.Tensor]):
    """The label function x -> label_fn(D(x)) (D runs locally, only D(x) is sent)."""

    def labels(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return label_fn(denoiser(x))

    return labels


@dataclass(frozen=True)
class ApiOptions:
    """``--api`` and its options: the endpoint ``url``, ``num_classes`` (None: the server's
    GET /info, else the dataset's), ``in_shape`` ("C,H,W" as written; None: the dataset's),
    the deadline ``timeout`` (seconds) of one request, its ``retries`` and the largest
    request body ``max_request_mb`` (MiB)."""

    url: str
    num_classes: int | None = None
    in_shape: str | None = None
    timeout: float = 30.0
    retries: int = 4
    max_request_mb: float = 4.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ApiOptions | None":
        """The options of add_query_arguments (None: no --api)."""
        if args.api is None:
            return None
        return cls(args.api, args.num_classes, args.in_shape, args.api_timeout, args.api_retries,
                   args.api_max_request_mb)


def api_classifier(api: ApiOptions, model: str | None, data: str, info) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The ``--api`` base classifier: (HTTPClassifier, meta with num_classes/in_shape,
    settings recorded in the sidecar); ``model`` (--model, which must be None) and ``data``
    (the --data name) only word the errors."""
    from smoothguard.contract import check_int, check_model_data, check_positive
    from smoothguard.models.remote import MAX_NUM_CLASSES, APIError, HTTPClassifier

    if model is not None:
        raise ValueError("give --model or --api, not both")
    retries = check_int("--api-retries", api.retries, minimum=0)
    timeout = check_positive("--api-timeout (seconds, the deadline for one whole request)", api.timeout)
    mb = check_positive("--api-max-request-mb", api.max_request_mb)
    if api.num_classes is not None:
        check_int("--num-classes", api.num_classes, 2, MAX_NUM_CLASSES)
    try:
        clf = HTTPClassifier(api.url, api.num_classes, timeout=timeout, retries=retries,
                             max_request_bytes=max(4, int(mb * (1 << 20))))
    except ValueError as exc:
        raise ValueError(f"--api: {exc}") from None
    try:
        server = clf.info()
    except APIError as exc:
        if exc.status not in (404, 405, 501):  # only a label-only endpoint without /info may skip it
            raise APIError(f"--api {api.url}: {exc}") from None
        server = {"info_error": str(exc)}
    num_classes = api.num_classes or server.get("num_classes") or info.num_classes
    clf.num_classes = int(num_classes)
    in_shape = tuple(info.input_shape)
    if api.in_shape:
        try:
            given = tuple(int(v) for v in api.in_shape.split(","))
        except ValueError as exc:
            raise ValueError(f"--in-shape must be C,H,W integers, e.g. 1,28,28; got {api.in_shape!r}") from exc
        if given != in_shape:
            raise ValueError(f"--in-shape {given} differs from the shape of --data {data}: {in_shape}")
    if server.get("in_shape") is not None and tuple(server["in_shape"]) != in_shape:
        raise ValueError(f"the endpoint expects inputs {tuple(server['in_shape'])}; --data {data} has {in_shape}")
    if server.get("num_classes") is not None and int(server["num_classes"]) != clf.num_classes:
        raise ValueError(f"--num-classes {clf.num_classes} but the endpoint reports {server['num_classes']} classes")
    check_model_data(clf.num_classes, None, info.num_classes, in_shape, model=f"the endpoint --api {api.url}",
                     data=f"--data {data}")
    settings = {"model": "api:" + api.url,
                "model_sha256": server.get("model_sha256") or "api:" + api.url,
                "model_arch": server.get("arch"), "api": api.url,
                "api_info": {k: v for k, v in server.items() if k not in ("protocol",)}}
    if server.get("denoiser"):
        settings.update(denoiser="api:" + str(server["denoiser"]), denoiser_sha256=server.get("denoiser_sha256"))
    return clf, {"num_classes": clf.num_classes, "in_shape": list(in_shape)}, settings
