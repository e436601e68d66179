"""What every op module shares to give its compiled op an autograd formula.

The kernels (csrc/) are built on torch's stable C ABI, which has no autograd: each op module
(``paired_first_layer_op``, ``paired_linear_op``, ``critic_head_op``, ``nwj_bound_op``,
``critic_mlp_op``) defines its formula as a ``torch.autograd.Function`` and registers it here as
the op's ``Autograd`` kernel (:func:`register_autograd`), so ``torch.ops.infomax_ext.<op>``
differentiates wherever it is called from (eager, ``opcheck``, ``torch.compile``). Forwards run
the kernels below autograd (:func:`below_autograd`); backwards call the ``*_backward`` ops, which
have no derivatives of their own (:func:`refuse_double_backward`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

OPS = torch.ops.infomax_ext
"""``torch.ops.infomax_ext``: the compiled ops."""

_LIB = torch.library.Library("infomax_ext", "IMPL")


def below_autograd() -> Any:
    """A context in which ops dispatch below their Autograd kernel (the kernels themselves)."""
    return torch._C._AutoDispatchBelowAutograd()


def refuse_double_backward(op: str, *tensors: torch.Tensor | None) -> None:
    """The backward ops have no derivatives of their own: a graph of the backward
    (create_graph=True) would give wrong second derivatives silently, so refuse it."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"infomax_ext: {op} does not support double backward (a gradient of its gradient, "
            "create_graph=True); compute higher derivatives on the plain-PyTorch path: inside "
            "`with infomax_ext.use_reference_path():`"
        )


def grad_if(wanted: bool, grad: torch.Tensor) -> torch.Tensor | None:
    """``grad`` where the input wants a gradient, else None."""
    return grad if wanted else None


def autograd_kernel(function: type[torch.autograd.Function],
                    op: Callable[..., Any]) -> Callable[..., Any]:
    """The op's Autograd kernel: ``function`` when a gradient can flow, else the kernel below
    autograd directly (no autograd node to build)."""

    def kernel(*args: Any) -> Any:
        if torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args
        ):
            return function.apply(*args)
        with below_autograd():
            return op(*args)

    return kernel


def eager_or_op(name: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.ops.infomax_ext.<name>`` for the op's Python wrapper: in eager mode its Autograd
    ``kernel`` called directly (the same computation without a round trip through the dispatcher
    into Python); while torch.compile traces, the op itself, so graphs hold the op."""
    op = getattr(OPS, name).default

    def call(*args: Any) -> Any:
        if torch.compiler.is_compiling():
            return op(*args)
        return kernel(*args)

    return call


def register_autograd(name: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
    """Registers ``kernel`` as the ``Autograd`` kernel of ``infomax_ext::<name>`` and returns
    :func:`eager_or_op` of it, what the op's wrapper calls. Only with the extension loaded."""
    _LIB.impl(name, kernel, "Autograd")
    return eager_or_op(name, kernel)
