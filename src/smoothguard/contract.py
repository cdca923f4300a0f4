"""The one input contract: every library entry point and every command checks its inputs here.

What is checked (and refused with a :class:`ContractError` that names the argument, the
problem and what is allowed):

* **images**: a float32 or float64 ``torch.Tensor`` of shape (N, C, H, W), or one image
  (C, H, W) where a single image is documented; every pixel finite and in [0, 1]. Integer,
  bool and half-precision tensors are refused with the conversion to use
  (``x.float() / 255`` for 0..255 pixels), and so are float images in 0..255.
* **labels**: an integer tensor (N,) with values in [0, K).
* **shapes**: images against a model's ``in_shape`` (C, H, W), ``num_classes`` of a model
  against the data's.
* **logits**: a model's output (N, K), finite (a model that returns NaN or inf is an error,
  never a vote for class 0).
* **parameters**: positive / non-negative numbers, integers, fractions, choices, ``sigma``,
  ``eps`` per norm, ``alpha``; Python and NumPy scalars (and 0-d tensors) are accepted,
  bool and strings are not.
* **outputs**: a result, report, figure or checkpoint is written only through
  :func:`atomic_output` / :func:`write_text_atomic` / :func:`write_bytes_atomic`: atomically
  (a temporary file renamed into place, so an earlier complete file survives any failure),
  never onto an existing target that is not a regular file (a device, FIFO, socket or
  folder), and with an :class:`OutputError` naming the path on any OS failure.

This module is at the ground floor: it imports nothing from the rest of the package.
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

NORMS = ("linf", "l2")
IMAGE_DTYPES = (torch.float32, torch.float64)


class ContractError(ValueError):
    """An input breaks the contract: wrong type, shape, range or value. The message names
    the argument, the problem and the allowed values."""


class OutputError(ContractError):
    """An output cannot be written where asked (the target is not a regular file, its
    folder is missing or is a file, no permission, disk full). Nothing was written and an
    earlier complete file at the target is left as it was."""


# ---------------------------------------------------------------------------------------
# scalar parameters


def as_number(name: str, value: object) -> float:
    """``value`` as a float: Python and NumPy real scalars and 0-d tensors; not bool/str."""
    if isinstance(value, bool) or (hasattr(value, "dtype") and str(getattr(value, "dtype")) in ("bool", "torch.bool")):
        raise ContractError(f"{name} must be a number; got the boolean {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ContractError(f"{name} must be a real number; got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    raise ContractError(f"{name} must be a number; got {type(value).__name__} {value!r}")


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    try:
        ok = value in allowed
    except TypeError:  # unhashable or incomparable
        ok = False
    if not ok:
        raise ContractError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_positive(name: str, value: object, allow_inf: bool = False) -> float:
    v = as_number(name, value)
    if not (v > 0) or (math.isinf(v) and not allow_inf):
        raise ContractError(f"{name} must be a positive{'' if allow_inf else ' finite'} number; got {value!r}")
    return v


def check_nonnegative(name: str, value: object, allow_inf: bool = False) -> float:
    v = as_number(name, value)
    if not (v >= 0) or (math.isinf(v) and not allow_inf):
        raise ContractError(f"{name} must be a non-negative{'' if allow_inf else ' finite'} number; got {value!r}")
    return v


def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer (Python, NumPy, a 0-d integer tensor or an integral float) in
    [minimum, maximum]."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value.item())
    ok = not isinstance(value, bool) and (
        isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()))
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if not ok:
        raise ContractError(f"{name} must be an integer {bounds}; got {value!r}")
    v = int(value)  # type: ignore[arg-type]
    if v < minimum or (maximum is not None and v > maximum):
        raise ContractError(f"{name} must be an integer {bounds}; got {value!r}")
    return v


def check_fraction(name: str, value: object, low_open: bool = True, high_open: bool = False) -> float:
    v = as_number(name, value)
    ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise ContractError(f"{name} must lie in {lo}, {hi}; got {value!r}")
    return v


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """A failure probability in (0, 1)."""
    return check_fraction(name, alpha, low_open=True, high_open=True)


def check_sigma(sigma: object, name: str = "sigma") -> float:
    """A noise scale in [0, 1] pixel units: positive and finite."""
    return check_positive(name, sigma)


def check_norm(norm: object, allowed: Sequence[str] = NORMS, name: str = "norm") -> str:
    if not isinstance(norm, str) or norm not in allowed:
        raise ContractError(f"{name} must be one of {', '.join(allowed)}; got {norm!r}")
    return norm


def check_eps(eps: object, norm: str, name: str = "eps") -> float:
    """A perturbation budget in [0, 1] pixel units for ``norm``: positive and finite; an
    l_inf budget above 1 covers the whole [0, 1] box and is refused as a unit mistake."""
    check_norm(norm)
    v = check_positive(name, eps)
    if norm == "linf" and v > 1:
        raise ContractError(f"{name} {v} > 1 covers the whole [0, 1] box for linf; eps is in [0, 1] pixel units "
                            "(did you mean eps/255?); allowed: (0, 1]")
    return v


# ---------------------------------------------------------------------------------------
# tensors


def check_images(
    x: object,
    name: str = "x",
    *,
    in_shape: Sequence[int] | None = None,
    single: bool = True,
    allow_empty: bool = True,
    unit_range: bool = True,
) -> torch.Tensor:
    """Checked images, always 4-D (N, C, H, W) (a single (C, H, W) image gets N = 1 when
    ``single``). The tensor itself is returned (no copy) apart from that view.
    ``unit_range=False`` skips the [0, 1] check (noisy images, see :func:`check_noisy_images`)."""
    if not isinstance(x, torch.Tensor):
        hint = " (convert with torch.as_tensor(x, dtype=torch.float32))" if hasattr(x, "shape") else ""
        raise ContractError(f"{name} must be a torch.Tensor of images in [0, 1]; got {type(x).__name__}{hint}")
    if x.dtype not in IMAGE_DTYPES:
        if x.dtype == torch.uint8 or not (x.is_floating_point() or x.is_complex()):
            how = "x.float() / 255" if x.dtype == torch.uint8 else "x.float() (scaled to [0, 1])"
            raise ContractError(f"{name} has dtype {x.dtype}; images must be float32 or float64 in [0, 1] "
                                f"(convert with {how})")
        raise ContractError(f"{name} has dtype {x.dtype}; images must be float32 or float64 in [0, 1] "
                            "(convert with x.float())")
    if x.dim() == 3 and single:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        shapes = "(N, C, H, W) or one image (C, H, W)" if single else "(N, C, H, W)"
        raise ContractError(f"{name} must have shape {shapes}; got shape {tuple(x.shape)}")
    if x.shape[0] == 0 and not allow_empty:
        raise ContractError(f"{name} holds no images (shape {tuple(x.shape)})")
    if in_shape is not None and tuple(x.shape[1:]) != tuple(int(s) for s in in_shape):
        raise ContractError(f"{name} has images of shape {tuple(x.shape[1:])}; the model expects (C, H, W) = "
                            f"{tuple(int(s) for s in in_shape)}")
    if x.numel():
        values = x.detach()  # the checks read values only (no autograd warning for inputs that need grad)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ContractError(f"{name} has {bad} non-finite pixel value(s) (NaN or inf); images must be "
                                "finite and in [0, 1]")
        lo, hi = (float(values.min()), float(values.max())) if unit_range else (0.0, 1.0)
        if lo < 0 or hi > 1:
            hint = (" (it looks like 0..255 pixels: divide by 255)" if hi > 1 and hi <= 255 and lo >= 0
                    else " (normalization belongs inside the model: pass [0, 1] pixels)")
            raise ContractError(f"{name} has pixel values in [{lo:g}, {hi:g}]; images must lie in [0, 1]{hint}")
    return x


def check_labels(y: object, num_classes: int | None = None, *, count: int | None = None,
                 name: str = "y") -> torch.Tensor:
    """Checked labels: an integer tensor (N,) (a 0-d one becomes (1,)) with values in
    [0, num_classes); ``count`` is the number of images they label."""
    if not isinstance(y, torch.Tensor):
        raise ContractError(f"{name} must be a torch.Tensor of integer class labels; got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ContractError(f"{name} has dtype {y.dtype}; labels must be an integer tensor (e.g. torch.int64)")
    if y.dim() == 0:
        y = y.reshape(1)
    if y.dim() != 1:
        raise ContractError(f"{name} must be a 1-D tensor of labels (N,); got shape {tuple(y.shape)}")
    if count is not None and y.shape[0] != count:
        raise ContractError(f"{name} has {y.shape[0]} labels for {count} images; need one label per image")
    if num_classes is not None and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ContractError(f"{name} has labels in [{lo}, {hi}]; labels must lie in [0, {num_classes}) "
                                f"for a {num_classes}-class model")
    return y


def check_logits(out: object, *, num_classes: int | None = None, count: int | None = None,
                 name: str = "the model") -> torch.Tensor:
    """A model's output: logits (N, K), every value finite."""
    if not isinstance(out, torch.Tensor):
        raise ContractError(f"{name} must return a tensor of logits (N, K); got {type(out).__name__}")
    if out.dim() != 2:
        raise ContractError(f"{name} must return logits of shape (N, K); got shape {tuple(out.shape)}")
    if count is not None and out.shape[0] != count:
        raise ContractError(f"{name} returned {out.shape[0]} rows of logits for {count} inputs")
    if num_classes is not None and out.shape[1] != num_classes:
        raise ContractError(f"{name} returned {out.shape[1]} logits per input; expected num_classes={num_classes}")
    if out.is_floating_point() and out.numel() and not bool(torch.isfinite(out.detach()).all()):
        raise ContractError(f"{name} returned non-finite logits (NaN or inf); check its weights and inputs "
                            "(a model with NaN weights cannot be certified or attacked)")
    return out


def model_in_shape(model: object) -> tuple[int, ...] | None:
    """The (C, H, W) a model states it takes (models built by ``get_model`` carry
    ``in_shape``), or None."""
    shape = getattr(model, "in_shape", None)
    return None if shape is None else tuple(int(v) for v in shape)


@contextmanager
def forward_errors(shape: Sequence[int], name: str = "the model") -> Iterator[None]:
    """Turns the shape error torch raises deep inside a model (a Linear of the wrong width,
    a convolution given the wrong channels) into a ContractError naming the input shape."""
    try:
        yield
    except RuntimeError as exc:
        msg = str(exc)
        if not any(word in msg for word in ("shape", "size", "Expected", "channels")):
            raise
        raise ContractError(f"{name} cannot run on images of shape {tuple(shape)}: {msg.splitlines()[0]} "
                            "(pass images of the shape it was built for)") from exc


def check_model_data(model_classes: int, model_shape: Sequence[int] | None, data_classes: int,
                     data_shape: Sequence[int], *, model: str = "the model", data: str = "the data") -> None:
    """A model and a dataset that belong together: the same number of classes and, when
    the model states it, the same (C, H, W)."""
    if int(model_classes) != int(data_classes):
        raise ContractError(f"{model} has {model_classes} classes but {data} has {data_classes}; "
                            "use a model trained on this dataset")
    if model_shape is not None and tuple(int(s) for s in model_shape) != tuple(int(s) for s in data_shape):
        raise ContractError(f"{model} expects images of shape {tuple(int(s) for s in model_shape)} but {data} "
                            f"has {tuple(int(s) for s in data_shape)}")


def check_model_finite(model: torch.nn.Module, name: str = "the model") -> None:
    """Every parameter and floating buffer of ``model`` finite (NaN weights give NaN
    logits; a zero ``std`` buffer of a Normalize layer gives inf)."""
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ContractError(f"{name} has non-finite values in {pname}; it cannot be evaluated")
    for mname, mod in model.named_modules():
        std = getattr(mod, "std", None)
        if isinstance(std, torch.Tensor) and std.is_floating_point() and std.numel() and bool((std == 0).any()):
            raise ContractError(f"{name}: {mname or 'the model'}.std has a zero entry (division by zero in "
                                "normalization); std must be positive")


def check_noisy_images(x: object, name: str = "x", *, in_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Noisy images (x + noise) as a base classifier receives them during smoothing: a
    float32 or float64 tensor (N, C, H, W), every value finite. Unlike
    :func:`check_images` values may leave [0, 1]: the noise is never clipped."""
    return check_images(x, name, in_shape=in_shape, single=False, unit_range=False)


# ---------------------------------------------------------------------------------------
# outputs


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a Path where a regular file may be written: refused when it exists and
    is not a regular file, or when its folder exists as something other than a folder."""
    if path is None or str(path) == "":
        raise OutputError(f"{what} path is empty; give a file name")
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:  # a path component is a file
        blocker = next((a for a in reversed(p.parents) if a.exists() and not a.is_dir()), p.parent)
        raise OutputError(f"cannot write {what} {p}: {blocker} is not a folder") from None
    except OSError as exc:
        raise OutputError(f"cannot write {what} {p}: {exc.strerror or exc}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if
                (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "not a regular file")
        raise OutputError(f"refusing to write {what} {p}: it exists and is {kind}; give the path of a regular file")
    parent = p.parent
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(f"cannot write {what} {p}: {anc} is not a folder")
            break
    return p


@contextmanager
def atomic_output(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without an exception
    it is renamed onto ``path`` (atomic on POSIX), otherwise removed. Missing parent
    folders are created. OS failures become :class:`OutputError` naming ``path``."""
    p = check_output_path(path, what)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        # not mkstemp: its 0600 mode would stick to the output; 0666 less the umask, like open()
        for _ in range(100):
            tmp = p.parent / f".{p.name}.{secrets.token_hex(4)}.tmp"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as exc:
        raise OutputError(f"cannot write {what} {p}: {exc.strerror or exc}") from None
    try:
        yield tmp
        # the target may have been replaced by a special file meanwhile: check again
        check_output_path(p, what)
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {what} {p}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "output") -> Path:
    with atomic_output(path, what) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), what)
