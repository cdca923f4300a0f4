"""Exact rewrites that make a model's forward pass cheaper without changing what it computes.

:func:`pool_before_relu` moves every ``ReLU -> MaxPool`` pair of an ``nn.Sequential`` to
``MaxPool -> ReLU``. ReLU is monotone and max pooling takes maxima, so
``maxpool(relu(x)) == relu(maxpool(x))`` for every tensor x, bit for bit (no arithmetic is
rounded: both operations only select or clamp values; a pooling window always holds at
least one element of x, so ``-inf`` padding never reaches the output; NaN propagates
through both orders alike). The ReLU then runs on a quarter of the elements (a 2 x 2 pool)
and in place on the pool's fresh output. Gradients agree too: a window's gradient goes to
the same argmax element, and where the maximum is <= 0 both orders give zero.

On the 2-core CPU of the development machine ReLU was a quarter of LeNet's forward time
at batch 400 (a memory-bound pass over 400 x 20 x 24 x 24 activations); the rewritten
LeNet ran 1.5x faster (``benchmarks/bench_certify.py``, BENCHMARKS.md).

The rewrite builds a new module tree that *shares* every parameter, buffer and leaf
module with the original (no weights are copied, training the one trains the other);
the original model is left untouched. Only plain ``nn.Sequential`` containers are
rewritten (a subclass may have its own forward), and never around a module that has
hooks (they would see other tensors).
"""

from __future__ import annotations

import copy

from torch import nn

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _swappable(a: nn.Module, b: nn.Module) -> bool:
    return (type(a) is nn.ReLU and type(b) in _POOLS and not b.return_indices
            and not _hooked(a) and not _hooked(b))


def _rewrite(module: nn.Module) -> tuple[nn.Module, int]:
    children = dict(module._modules)
    swaps = 0
    for name, child in children.items():
        if child is not None:
            new, k = _rewrite(child)
            children[name] = new
            swaps += k
    if type(module) is nn.Sequential and not _hooked(module):
        seq = list(children.values())
        out, i = [], 0
        while i < len(seq):
            if i + 1 < len(seq) and _swappable(seq[i], seq[i + 1]):
                out += [seq[i + 1], nn.ReLU(inplace=True)]
                i += 2
                swaps += 1
            else:
                out.append(seq[i])
                i += 1
        children = dict(zip(children.keys(), out))
    if not swaps:
        return module, 0
    clone = copy.copy(module)  # shallow: shares _parameters and _buffers with the original
    clone._modules = children
    return clone, swaps


def pool_before_relu(module: nn.Module) -> tuple[nn.Module, int]:
    """A module computing exactly ``module``'s function with each ``ReLU -> MaxPool`` of
    its ``nn.Sequential`` containers swapped (see the module docstring); returns it and
    the number of pairs swapped (0: ``module`` itself is returned)."""
    return _rewrite(module)
