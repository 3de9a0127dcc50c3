"""Attention projections whose weights are not applied by a child `torch.nn.Linear`.

Two common attention modules apply their projection weights directly:

- SpeechBrain's ``RelPosMHAXL`` (and ``RoPEMHA``) keep the fused Q/K/V weight as a raw Parameter
  ``in_proj_weight`` [3 E, E] and apply it with ``F.linear`` inside ``forward``;
- `torch.nn.MultiheadAttention` hands ``in_proj_weight``/``in_proj_bias`` and
  ``out_proj.weight``/``out_proj.bias`` to ``F.multi_head_attention_forward`` (its
  ``out_proj.forward`` never runs).

There is no child module to swap, and re-implementing their ``forward`` would tie this package
to each version of each class. Instead the module keeps its identity (parents, optimizers and
hparams keep their references), its Parameters and its state_dict keys; only its class is swapped
in place for a subclass (`map_in_projection`, `map_multihead_attention`) whose ``forward`` runs
the original ``forward`` unchanged inside a `torch.overrides.TorchFunctionMode` (thread-local).
The mode intercepts exactly the calls that apply the mapped weights and computes them through a
`HardwareMatmul`; every other call passes through untouched. In ``digital`` mode the original
``forward`` runs without the mode, so outputs are bitwise those of the original module.

- ``F.linear(x, in_proj_weight)`` is computed by ``in_proj_matmul``. A call with a row block of
  the weight (``in_proj_weight.chunk(3)``, used for cross-attention) reads the whole fused chip
  and keeps the block's columns, as the fused crossbar would.
- ``F.multi_head_attention_forward`` gets its inputs already projected by ``in_proj_matmul``
  (Q, K, V = column blocks of one fused read), identity projection matrices in place of the
  weights, and its output is projected by ``out_proj_matmul``.

Attention products (``hardware.attention_bits``, off by default; the authors' QAT configs
fake-quantize QK^T and AV at the weight bit width): in ``fake_quant`` and ``analog`` the mode of
a `HardwareInProjection` also routes every ``torch.matmul`` of two 4-D tensors [batch, heads,
., .] that the module's forward computes (RelPosMHAXL: Q K^T, the positional term Q P^T and
A V), quantizing both operands per tensor, symmetric, at the current tensor's range
(straight-through gradient; the authors observe running ranges instead). A forward with the
option on that computes no such product raises a RuntimeError; `torch.nn.MultiheadAttention`
(fused kernel) raises a ValueError. With the option off nothing is routed beyond F.linear.

If a forward in a hardware mode never applies the mapped weight (an attention class that
handles its weight differently), a RuntimeError says so instead of silently staying digital.
Not supported: scripting (``torch.jit.script``) the swapped modules, and
`torch.nn.MultiheadAttention` with ``kdim``/``vdim`` different from ``embed_dim`` (separate Q,
K, V weights) for the input projection.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.layers.base import HardwareLayer, new_matmul
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import Execution
from speechbrain_memristor.layers.quantizers import fake_quantize_dynamic

_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


class _Router(TorchFunctionMode):
    """Sends calls of ``target`` to ``handler`` (which may decline with NotImplemented), and
    calls of ``products`` (None: not routed) to ``product_handler``; ``routed`` and
    ``products_routed`` count the calls each handled."""

    def __init__(
        self,
        target: Callable,
        handler: Callable,
        products: Callable | None = None,
        product_handler: Callable | None = None,
    ):
        super().__init__()
        self.target = target
        self.handler = handler
        self.products = products
        self.product_handler = product_handler
        self.routed = 0
        self.products_routed = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is self.target:
            result = self.handler(*args, **kwargs)
            if result is not NotImplemented:
                self.routed += 1
                return result
        elif func is self.products and self.product_handler is not None:
            result = self.product_handler(*args, **kwargs)
            if result is not NotImplemented:
                self.products_routed += 1
                return result
        return func(*args, **kwargs)


def _quantized_product(bits: int, input: Tensor, other: Tensor, **kwargs) -> Tensor:
    """torch.matmul of two 4-D operands [batch, heads, ., .] (an attention product), each
    fake-quantized per tensor at ``bits`` (`quantizers.fake_quantize_dynamic`); other calls
    decline (NotImplemented)."""
    if kwargs or input.dim() != 4 or other.dim() != 4:
        return NotImplemented
    return torch.matmul(fake_quantize_dynamic(input, bits), fake_quantize_dynamic(other, bits))


def _rows_of(weight: Tensor, base: Tensor) -> slice | None:
    """The rows of ``base`` that ``weight`` is (a contiguous row block view), else None."""
    if weight is base:
        return slice(None)
    if (
        weight._base is not base
        or weight.dim() != 2
        or weight.shape[1] != base.shape[1]
        or weight.stride() != base.stride()
    ):
        return None
    offset = weight.storage_offset() - base.storage_offset()
    if offset % base.stride(0):
        return None
    start = offset // base.stride(0)
    return slice(start, start + weight.shape[0])


def _rebuild(mixin: type, base: type) -> torch.nn.Module:
    """Unpickling helper: an empty instance of the swapped class (state is set afterwards)."""
    return object.__new__(_hardware_class(mixin, base))


class HardwareAttention(HardwareLayer):
    """Common part of the attention mixins: digital shortcut, routing, pickling."""

    def _digital(self) -> bool:
        return all(matmul.execution == Execution.DIGITAL for matmul in self.hardware_matmuls())

    def _attention_bits(self) -> int | None:
        """``hardware.attention_bits`` of the first mapped projection that sets it."""
        bits = [m.hardware.attention_bits for m in self.hardware_matmuls()]
        return next((b for b in bits if b is not None), None)

    def _routed_forward(self, router: _Router, *args, **kwargs):
        with router:
            output = super().forward(*args, **kwargs)  # type: ignore[misc]
        if router.routed == 0:
            raise RuntimeError(
                f"{type(self).__name__} ran its forward in a hardware execution mode without "
                "applying its mapped projection weight the supported way; this attention class "
                "is not supported. Exclude it from conversion (keep it digital)."
            )
        if router.product_handler is not None and router.products_routed == 0:
            raise RuntimeError(
                f"HardwareConfig.attention_bits={self._attention_bits()!r}, but "
                f"{type(self).__name__} computed no torch.matmul of two 4-D tensors (QK^T, AV) "
                "to quantize; set attention_bits to null for this attention class."
            )
        return output

    def __reduce_ex__(self, protocol):
        cls = type(self)
        return (_rebuild, (cls._hardware_mixin, cls._wrapped_class), self.__dict__.copy())


class HardwareInProjection(HardwareAttention):
    """Mixin for attention modules that apply a raw ``in_proj_weight`` with ``F.linear``."""

    in_proj_weight: torch.nn.Parameter
    in_proj_matmul: HardwareMatmul

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        return [(self.in_proj_matmul, self.in_proj_weight)]

    def forward(self, *args, **kwargs):
        if self._digital():
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        bits = self._attention_bits()
        products = None if bits is None else functools.partial(_quantized_product, bits)
        router = _Router(F.linear, self._project, torch.matmul, products)
        return self._routed_forward(router, *args, **kwargs)

    def _project(self, input: Tensor, weight: Tensor, bias: Tensor | None = None):
        rows = _rows_of(weight, self.in_proj_weight)
        if rows is None:
            return NotImplemented
        if rows == slice(None):
            return self.in_proj_matmul(input, self.in_proj_weight, bias)
        output = self.in_proj_matmul(input, self.in_proj_weight, None)[..., rows]
        return output if bias is None else output + bias


class HardwareMultiheadAttention(HardwareAttention):
    """Mixin for `torch.nn.MultiheadAttention`: input and/or output projection on hardware.

    ``in_proj_matmul`` / ``out_proj_matmul`` are None for a projection that stays digital.
    """

    in_proj_weight: torch.nn.Parameter
    in_proj_bias: torch.nn.Parameter | None
    out_proj: torch.nn.Linear
    embed_dim: int
    in_proj_matmul: HardwareMatmul | None
    out_proj_matmul: HardwareMatmul | None

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        pairs = [
            (self.in_proj_matmul, self.in_proj_weight),
            (self.out_proj_matmul, self.out_proj.weight),
        ]
        return [(matmul, weight) for matmul, weight in pairs if matmul is not None]

    def forward(self, *args, **kwargs):
        if self._digital():
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        if self._attention_bits() is not None:
            raise ValueError(
                f"HardwareConfig.attention_bits={self._attention_bits()!r} is not supported for "
                "torch.nn.MultiheadAttention (its fused attention kernel cannot be hooked); set "
                "attention_bits to null for this layer (e.g. via layer_hardware)."
            )
        router = _Router(F.multi_head_attention_forward, self._attend)
        return self._routed_forward(router, *args, **kwargs)

    def _attend(self, *args, **kwargs):
        call = _MHA_SIGNATURE.bind(*args, **kwargs)
        call.apply_defaults()
        arguments = call.arguments
        if arguments["out_proj_weight"] is not self.out_proj.weight:
            return NotImplemented
        query = arguments["query"]
        identity = torch.eye(self.embed_dim, dtype=query.dtype, device=query.device)
        if self.in_proj_matmul is not None:
            arguments.update(
                zip(("query", "key", "value"), self._project_inputs(arguments), strict=True)
            )
            arguments.update(
                in_proj_weight=None,
                in_proj_bias=None,
                use_separate_proj_weight=True,
                q_proj_weight=identity,
                k_proj_weight=identity,
                v_proj_weight=identity,
            )
        out_weight, out_bias = arguments["out_proj_weight"], arguments["out_proj_bias"]
        if self.out_proj_matmul is not None:
            arguments.update(out_proj_weight=identity, out_proj_bias=None)
        output, attention = F.multi_head_attention_forward(*call.args, **call.kwargs)
        if self.out_proj_matmul is not None:
            output = self.out_proj_matmul(output, out_weight, out_bias)
        return output, attention

    def _project_inputs(self, arguments: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V: column blocks of fused reads (one read per distinct input tensor)."""
        assert self.in_proj_matmul is not None
        reads: dict[int, Tensor] = {}
        blocks = []
        for index, role in enumerate(("query", "key", "value")):
            x = arguments[role]
            if id(x) not in reads:
                reads[id(x)] = self.in_proj_matmul(x, self.in_proj_weight, self.in_proj_bias)
            blocks.append(reads[id(x)][..., index * self.embed_dim : (index + 1) * self.embed_dim])
        return blocks[0], blocks[1], blocks[2]


@functools.cache
def _hardware_class(mixin: type, base: type) -> type:
    """The subclass of ``base`` with ``mixin`` first in its MRO (one class per pair)."""
    return type(
        f"Memristor{base.__name__}",
        (mixin, base),
        {"__module__": __name__, "_hardware_mixin": mixin, "_wrapped_class": base},
    )


def _swap_class(module: torch.nn.Module, mixin: type) -> None:
    if isinstance(module, HardwareAttention):
        raise ValueError(
            f"{type(module).__name__} is already converted; convert each module only once."
        )
    module.__class__ = _hardware_class(mixin, type(module))


def map_in_projection(
    module: torch.nn.Module, hardware: HardwareConfig, execution: str = "digital", name: str = ""
) -> torch.nn.Module:
    """Route ``module.in_proj_weight`` (applied with F.linear) through a HardwareMatmul, in place.

    Returns ``module`` itself, now an instance of a `HardwareInProjection` subclass of its class
    with the new submodule ``in_proj_matmul`` (no state_dict entries). ``name`` names the chip.
    """
    weight = module._parameters.get("in_proj_weight")
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 2:
        raise TypeError(
            f"{type(module).__name__} has no 2-D Parameter 'in_proj_weight'; map_in_projection "
            "supports attention modules (e.g. RelPosMHAXL) that apply it with F.linear."
        )
    if isinstance(module, torch.nn.MultiheadAttention):
        raise TypeError("Use map_multihead_attention for torch.nn.MultiheadAttention.")
    _swap_class(module, HardwareInProjection)
    module.in_proj_matmul = new_matmul(hardware, execution, name, weight, module.training)
    return module


def map_multihead_attention(
    module: torch.nn.MultiheadAttention,
    hardware: HardwareConfig,
    execution: str = "digital",
    in_proj_name: str | None = None,
    out_proj_name: str | None = None,
    out_proj_hardware: HardwareConfig | None = None,
) -> torch.nn.MultiheadAttention:
    """Map the input and/or output projection of a `torch.nn.MultiheadAttention`, in place.

    A projection is mapped when its name (which seeds its chip) is given, e.g.
    ``in_proj_name="enc.att.in_proj_weight"``, ``out_proj_name="enc.att.out_proj"``. The output
    projection uses ``out_proj_hardware`` (None: ``hardware``). Returns ``module`` itself as a
    `HardwareMultiheadAttention` subclass instance.
    """
    if not isinstance(module, torch.nn.MultiheadAttention):
        raise TypeError(
            f"map_multihead_attention expects a torch.nn.MultiheadAttention, got "
            f"{type(module).__name__}."
        )
    if in_proj_name is None and out_proj_name is None:
        raise ValueError("Give in_proj_name and/or out_proj_name: nothing to map.")
    if in_proj_name is not None and not module._qkv_same_embed_dim:
        raise ValueError(
            f"{in_proj_name!r}: MultiheadAttention with kdim/vdim != embed_dim "
            f"({module.kdim}/{module.vdim} vs {module.embed_dim}) has separate Q, K, V weights, "
            "which are not supported on hardware; keep its input projection digital."
        )
    _swap_class(module, HardwareMultiheadAttention)
    like = module.out_proj.weight
    module.in_proj_matmul = (
        None
        if in_proj_name is None
        else new_matmul(hardware, execution, in_proj_name, like, module.training)
    )
    module.out_proj_matmul = (
        None
        if out_proj_name is None
        else new_matmul(
            out_proj_hardware or hardware, execution, out_proj_name, like, module.training
        )
    )
    return module
