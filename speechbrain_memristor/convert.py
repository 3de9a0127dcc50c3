"""Convert a model's weight matrices to hardware execution in place, switch modes, program chips.

`convert` walks a model (or a mapping of named models, like a SpeechBrain Brain's ``modules``),
finds every weight matrix it can map and converts the selected ones in place:

- `torch.nn.Linear` (also inside ``speechbrain.nnet.linear.Linear``) -> `MemristorLinear`,
  `torch.nn.Conv1d` / `Conv2d` -> `MemristorConv1d` / `MemristorConv2d` (grouped ones mapped
  group-wise), `torch.nn.LSTM` / `GRU` -> `MemristorLSTM` / `MemristorGRU` (one matrix per
  ``weight_ih_l{k}`` / ``weight_hh_l{k}``); the child is replaced by a layer sharing its
  Parameter objects;
- a raw ``in_proj_weight`` applied with F.linear (SpeechBrain ``RelPosMHAXL``, ``RoPEMHA``) and
  the projections of `torch.nn.MultiheadAttention`: the module's class is swapped in place
  (`layers.attention`).

Roots are never replaced (hparams, checkpointers and optimizers reference them) and Parameters
are shared, so state_dict keys and optimizer references are unchanged.

Selection. Each mappable matrix has a qualified name: the module's name for a Linear/Conv
(``encoder.layers.0.ffn_module1.1.ffn.0``), ``<attention>.in_proj_weight`` for a fused input
projection and ``<attention>.out_proj`` for an output projection. A pattern selects a matrix
when it matches (`fnmatch`, ``*`` also spans dots) the matrix's name or the name of any module
containing it; ``type:<Class>`` matches the class name (or dotted path) of the layer or of any
containing module. A matrix is mapped when an ``include`` pattern selects it and no ``exclude``
pattern does. ``include=None`` is the default mapping for what the model contains (`mappings`:
the paper's Conformer patterns plus those of each detected architecture). Names are relative
to the root(s) given, and each chip is seeded by (hardware seed, name). ``filter_fn(module, name)`` (as in
torchao's ``quantize_``) further restricts the selection: a matrix is mapped only when it also
returns True for the module holding the matrix and the matrix's qualified name; with
``include=None`` and a ``filter_fn``, the filter alone decides (no default mapping).

Per-layer hardware. ``layer_hardware`` maps patterns (as above) to `HardwareConfig` field
overrides, e.g. ``{"*.mha_layer.out_proj": {"adc_precision_bits": 6, "adc_range_bits": 6}}``.
Patterns apply in order to every mapped matrix they select, each replacing the fields of
earlier ones (later patterns win); the result is the matrix's own validated config (its
`HardwareMatmul.hardware`). A pattern that selects no mapped matrix, an unknown field, ``seed``
(chips are seeded by the global seed and the layer name) and an invalid resulting config are
errors naming the pattern (and the layer and field).

Coverage (`coverage`): the log counts every parameter of the model (on crossbars, digital by
choice, not mappable by type) and warns when the selection creates more than ``max_cells``.

Per-module-type rules (which matrices a module holds, how to map them) live in `rules`.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from speechbrain_memristor.config import ADC_FIELDS, FIELD_NAMES, IDEAL_ADC, HardwareConfig
from speechbrain_memristor.coverage import (
    CELL_BUDGET_FACTOR,
    Coverage,
    MatrixCells,
    count_coverage,
)
from speechbrain_memristor.crossbar.grouped import matrix_inventory
from speechbrain_memristor.layers.base import HardwareLayer
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import check_execution
from speechbrain_memristor.mappings import PAPER_CONFORMER_MAPPING as PAPER_CONFORMER_MAPPING
from speechbrain_memristor.mappings import default_mapping
from speechbrain_memristor.rules import SUPPORTED, ConversionRule, MatrixSite, rule_for
from speechbrain_memristor.util.tables import aligned_table

logger = logging.getLogger(__name__)

TYPE_PREFIX = "type:"

Model = torch.nn.Module | Mapping[str, torch.nn.Module]
FilterFn = Callable[[torch.nn.Module, str], bool]
# Per-layer hardware: layer pattern -> HardwareConfig field overrides (`check_layer_hardware`).
LayerHardware = Mapping[str, Mapping[str, Any]]
# Fields that cannot differ per layer: every chip is seeded by (global seed, layer name).
GLOBAL_FIELDS = ("seed",)
LAYER_FIELDS: tuple[str, ...] = tuple(name for name in FIELD_NAMES if name not in GLOBAL_FIELDS)


@dataclass(frozen=True)
class _Matrix:
    """One mappable weight matrix found in the model."""

    name: str
    site: MatrixSite
    rule: ConversionRule
    module: torch.nn.Module  # the layer, or the attention module owning the weight
    parent: torch.nn.Module | None  # None when ``module`` is a root
    attribute: str
    scopes: tuple[tuple[str, torch.nn.Module], ...]  # containing modules, outermost first

    @property
    def weight(self) -> Tensor:
        return self.rule.weight(self.module, self.site.role)

    @property
    def shape(self) -> tuple[int, int]:
        return self.site.shape


@dataclass
class _Walk:
    """What a walk over the model found."""

    matrices: list[_Matrix]
    modules: list[tuple[str, torch.nn.Module]]  # every (name, module), out_proj children too
    converted: list[tuple[str, torch.nn.Module]]  # layers converted by an earlier call


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _roots(model: Model) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(model, torch.nn.Module):
        return [("", model)]
    if isinstance(model, Mapping):
        roots = list(model.items())
        for key, module in roots:
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"model[{key!r}] is a {type(module).__name__}, not a torch Module.")
        return roots
    raise TypeError(
        f"model must be a torch.nn.Module or a mapping of names to modules, got "
        f"{type(model).__name__}."
    )


def _find_matrices(model: Model) -> _Walk:
    """Every mappable matrix, every module and every already converted layer of ``model``."""
    walk = _Walk([], [], [])
    seen: set[int] = set()

    def visit(name, module, parent, attribute, scopes):
        if id(module) in seen:
            return
        seen.add(id(module))
        scopes = (*scopes, (name, module))
        walk.modules.append((name, module))
        if isinstance(module, HardwareLayer):
            walk.converted.append((name, module))
            return
        rule = rule_for(module)
        if rule is not None:
            for site in rule.sites(module, name):
                walk.modules.extend(site.extra_scopes)
                matrix_name = _join(name, site.suffix) if site.suffix else name
                walk.matrices.append(
                    _Matrix(
                        matrix_name,
                        site,
                        rule,
                        module,
                        parent,
                        attribute,
                        (*scopes, *site.extra_scopes),
                    )
                )
            if not rule.descends:
                return
        for child_name, child in module.named_children():
            visit(_join(name, child_name), child, module, child_name, scopes)

    for key, root in _roots(model):
        visit(key, root, None, key, ())
    return walk


def _type_names(module: torch.nn.Module) -> tuple[str, str]:
    cls = type(module)
    return cls.__name__, f"{cls.__module__}.{cls.__qualname__}"


def _matches_module(pattern: str, name: str, module: torch.nn.Module) -> bool:
    if pattern.startswith(TYPE_PREFIX):
        wanted = pattern[len(TYPE_PREFIX) :]
        return any(fnmatch.fnmatchcase(type_name, wanted) for type_name in _type_names(module))
    return fnmatch.fnmatchcase(name, pattern)


def _selects(pattern: str, matrix: _Matrix) -> bool:
    if not pattern.startswith(TYPE_PREFIX) and fnmatch.fnmatchcase(matrix.name, pattern):
        return True
    return any(_matches_module(pattern, name, module) for name, module in matrix.scopes)


def name_selects(pattern: str, name: str) -> bool:
    """Whether ``pattern`` selects the matrix named ``name`` by names alone: it matches the
    name or the name of a containing module (a dotted prefix). False for ``type:`` patterns,
    which need the model."""
    if pattern.startswith(TYPE_PREFIX):
        return False
    parts = name.split(".")
    return any(
        fnmatch.fnmatchcase(".".join(parts[:end]), pattern) for end in range(1, len(parts) + 1)
    )


def _check_patterns(kind: str, patterns: Sequence[str], walk: _Walk) -> None:
    """Every pattern must select a matrix (or an already converted layer); else a clear error."""
    matrices, converted = walk.matrices, walk.converted
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"{kind} patterns must be non-empty strings, got {pattern!r}.")
        if any(_selects(pattern, matrix) for matrix in matrices) or any(
            _matches_module(pattern, name, layer) for name, layer in converted
        ):
            continue
        raise _unmatched(kind, pattern, walk)


def _unmatched(kind: str, pattern: str, walk: _Walk) -> ValueError:
    """The error for a pattern that selects no weight matrix (with close names)."""
    matrices, modules = walk.matrices, walk.modules
    hits = [(name, module) for name, module in modules if _matches_module(pattern, name, module)]
    if hits:
        found = ", ".join(f"{name or '<root>'} ({type(m).__name__})" for name, m in hits[:5])
        return ValueError(
            f"{kind} pattern {pattern!r} selects {found}{' ...' if len(hits) > 5 else ''}, "
            f"which contain no supported weight matrix. Supported: {SUPPORTED}."
        )
    if pattern.startswith(TYPE_PREFIX):
        candidates = {type(module).__name__ for _, module in modules}
    else:
        names = [name for name, _ in modules] + [matrix.name for matrix in matrices]
        candidates = {part for name in names for part in name.split(".")}
    parts = [part.strip("*?[]") for part in pattern.removeprefix(TYPE_PREFIX).split(".")]
    tail = next((part for part in reversed(parts) if part), "")  # its last named part
    close = difflib.get_close_matches(tail, sorted(candidates - {""}), n=3) if tail else []
    hint = f" Close names: {', '.join(close)}." if close else ""
    return ValueError(
        f"{kind} pattern {pattern!r} matches nothing in the model.{hint} Patterns use "
        "fnmatch on qualified module names ('*' spans dots), or 'type:<ClassName>'."
    )


def _check_fits(matrix: _Matrix) -> None:
    """A clear error when ``matrix`` cannot be mapped."""
    weight = matrix.weight
    if not weight.is_floating_point():
        raise ValueError(
            f"Layer {matrix.name!r} has {weight.dtype} weights; hardware layers quantize "
            "floating-point weights. Convert before quantizing the model another way, or exclude it."
        )
    out_features, in_features = matrix.shape
    if out_features == 0 or in_features == 0:
        raise ValueError(
            f"Layer {matrix.name!r} has an empty weight matrix {out_features}x{in_features}; "
            "exclude it."
        )
    if matrix.parent is None and matrix.rule.replaces_module:
        raise ValueError(
            f"Layer {matrix.name or '<root>'!r} ({matrix.site.kind}) is a root module; convert() "
            "swaps children in place and never replaces a root (others reference it). Wrap "
            "it in a container (e.g. torch.nn.Sequential) before building the Brain."
        )


def _select(
    walk: _Walk,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    filter_fn: FilterFn | None,
) -> list[_Matrix]:
    """The matrices to map (module doc: patterns, then ``filter_fn``)."""
    if include is not None:
        _check_patterns("include", include, walk)
    _check_patterns("exclude", exclude or (), walk)
    if include is None and filter_fn is not None:
        chosen = list(walk.matrices)
    else:
        patterns = default_mapping(m for _, m in walk.modules) if include is None else include
        chosen = [m for m in walk.matrices if any(_selects(p, m) for p in patterns)]
    chosen = [m for m in chosen if not any(_selects(p, m) for p in exclude or ())]
    if filter_fn is not None:
        chosen = [m for m in chosen if filter_fn(m.module, m.name)]
    if include is None and filter_fn is None and not chosen and not walk.converted:
        names = [matrix.name for matrix in walk.matrices]
        found = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") or "none"
        raise ValueError(
            "The default mapping (README 'Default mappings': Conformer, Branchformer, "
            "Transformer and recurrent blocks) selects nothing in this model. Its mappable "
            f"weight matrices: {found}. Pass include patterns naming the layers to map, e.g. "
            f"include={names[:1] or ['*.layers.*']}, or by type, e.g. include=['type:Linear'] "
            "(convert's coverage() shows their parameters and cells before converting)."
        )
    for matrix in chosen:
        _check_fits(matrix)
    return chosen


def check_layer_hardware(layer_hardware: LayerHardware | None) -> dict[str, dict[str, Any]]:
    """``layer_hardware`` as a plain ordered dict {pattern: {field: value}}, checked.

    Patterns are those of ``include`` (module doc); values are `HardwareConfig` fields (the
    word "ideal" in an ADC field means None, an ideal ADC). An unknown field, ``seed`` (chips
    are seeded by the global seed and the layer name) or a malformed mapping is an error.
    Whether each pattern selects a mapped layer and each layer's config is valid is checked by
    `convert`.
    """
    if layer_hardware is None:
        return {}
    if not isinstance(layer_hardware, Mapping):
        raise TypeError(
            "layer_hardware must be a mapping of layer patterns to HardwareConfig field "
            f"overrides, e.g. {{'*.out_proj': {{'adc_precision_bits': 6}}}}, got {layer_hardware!r}."
        )
    checked: dict[str, dict[str, Any]] = {}
    for pattern, fields in layer_hardware.items():
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"layer_hardware patterns must be non-empty strings, got {pattern!r}.")
        if not isinstance(fields, Mapping):
            raise TypeError(
                f"layer_hardware[{pattern!r}] must be a mapping of HardwareConfig fields to "
                f"values, e.g. {{adc_precision_bits: 6}}, got {fields!r}."
            )
        for name in fields:
            if name in GLOBAL_FIELDS:
                raise ValueError(
                    f"layer_hardware pattern {pattern!r} sets {name!r}, which cannot differ per "
                    "layer: every chip is seeded by the global seed (HardwareConfig.seed, the "
                    "hook's seed) and the layer's name. Remove it; set the global seed instead."
                )
            if name not in FIELD_NAMES:
                close = difflib.get_close_matches(str(name), LAYER_FIELDS, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ValueError(
                    f"layer_hardware pattern {pattern!r} sets unknown field {name!r}.{hint} "
                    f"Per-layer fields: {', '.join(LAYER_FIELDS)}."
                )
        checked[pattern] = {
            name: None if name in ADC_FIELDS and value == IDEAL_ADC else value
            for name, value in fields.items()
        }
    return checked


def hardware_differences(base: HardwareConfig, config: HardwareConfig) -> dict[str, Any]:
    """The fields (seed excluded) in which ``config`` differs from ``base``: {field: value}."""
    return {
        name: getattr(config, name)
        for name in LAYER_FIELDS
        if getattr(config, name) != getattr(base, name)
    }


def describe_differences(differences: Mapping[str, Any]) -> str:
    """``field=value, ...`` (or "-" when there is none), as the log and the report show it."""
    return ", ".join(f"{name}={value}" for name, value in differences.items()) or "-"


def _layer_configs(
    walk: _Walk,
    selected: list[_Matrix],
    hardware: HardwareConfig,
    layer_hardware: dict[str, dict[str, Any]],
) -> dict[str, HardwareConfig]:
    """The validated config of every selected matrix: ``hardware`` with the fields of each
    matching pattern applied in order (later patterns win)."""
    for pattern in layer_hardware:
        if any(_selects(pattern, matrix) for matrix in selected):
            continue
        unmapped = [matrix.name for matrix in walk.matrices if _selects(pattern, matrix)]
        unmapped += [
            name for name, layer in walk.converted if _matches_module(pattern, name, layer)
        ]
        if unmapped:
            raise ValueError(
                f"layer_hardware pattern {pattern!r} selects no layer mapped by this conversion, "
                f"only {', '.join(unmapped[:5])}{' ...' if len(unmapped) > 5 else ''}, which "
                "stay digital (or were converted earlier). Per-layer settings apply to mapped "
                "layers: add them to include, or fix the pattern."
            )
        raise _unmatched("layer_hardware", pattern, walk)
    configs = {}
    for matrix in selected:
        changes: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for pattern, fields in layer_hardware.items():
            if _selects(pattern, matrix):
                changes.update(fields)
                sources.update(dict.fromkeys(fields, pattern))
        configs[matrix.name] = _layer_config(hardware, matrix.name, changes, sources)
    return configs


def _layer_config(
    hardware: HardwareConfig, name: str, changes: dict[str, Any], sources: dict[str, str]
) -> HardwareConfig:
    if not changes:
        return hardware
    try:
        return hardware.replace(**changes)
    except (TypeError, ValueError) as error:
        found = re.search(r"HardwareConfig\.(\w+)", str(error))
        field = found.group(1) if found else None
        pattern = sources.get(field, list(sources.values())[-1])
        given = ", ".join(f"{key}={value!r} ({sources[key]!r})" for key, value in changes.items())
        raise ValueError(
            f"layer_hardware pattern {pattern!r} makes the hardware of layer {name!r} invalid"
            f"{f' in field {field}' if field else ''}: {error} Per-layer fields of this layer "
            f"(pattern): {given}."
        ) from None


def _map_selected(
    selected: list[_Matrix], configs: Mapping[str, HardwareConfig], execution: str
) -> None:
    """Map the selected matrices module by module (one rule call per module)."""
    by_module: dict[int, list[_Matrix]] = {}
    for matrix in selected:
        by_module.setdefault(id(matrix.module), []).append(matrix)
    for matrices in by_module.values():
        first = matrices[0]
        names = {matrix.site.role: matrix.name for matrix in matrices}
        hardware = {matrix.site.role: configs[matrix.name] for matrix in matrices}
        replacement = first.rule.map(first.module, names, hardware, execution)
        if first.rule.replaces_module:
            setattr(first.parent, first.attribute, replacement)


def _coverage(
    model: Model, walk: _Walk, selected: list[_Matrix], configs: Mapping[str, HardwareConfig]
) -> Coverage:
    """`Coverage` of the model once ``selected`` is mapped (earlier conversions included)."""
    mapped = [matrix.weight for matrix in selected]
    for _, layer in walk.converted:
        mapped += layer.mapped_parameters()
    cells = []
    for matrix in selected:
        inventory = matrix_inventory(*matrix.shape, configs[matrix.name], matrix.site.groups)
        cells.append(MatrixCells(matrix.name, inventory.cells))
    return count_coverage(_roots(model), mapped, [m.weight for m in walk.matrices], cells)


def _default_max_cells(coverage: Coverage, hardware: HardwareConfig) -> int:
    return CELL_BUDGET_FACTOR * coverage.total * 2 * hardware.bit_planes


def _log_table(
    matrices: list[_Matrix],
    configs: Mapping[str, HardwareConfig],
    execution: str,
    hardware: HardwareConfig,
    coverage: Coverage,
) -> None:
    # Grouped convolutions: out channels x rows per group (each group's matrix on its own).
    rows = [("layer", "type", "matrix (out x in)", "mapping", "cells", "hardware")]
    for matrix in matrices:
        out_features, in_features = matrix.shape
        config = configs.get(matrix.name)
        groups = matrix.site.groups
        inventory = matrix_inventory(out_features, in_features, config or hardware, groups)
        kind = matrix.site.kind if groups == 1 else f"{matrix.site.kind}, {groups} groups"
        rows.append(
            (
                matrix.name,
                kind,
                f"{out_features} x {in_features}",
                "digital" if config is None else "hardware",
                "-" if config is None else f"{inventory.cells:,}",
                "-"
                if config is None
                else describe_differences(hardware_differences(hardware, config)),
            )
        )
    logger.info(
        "Memristor conversion: %d of %d mappable weight matrices mapped, %s cells; %s; "
        "execution=%s, weight_bits=%d, tiles %dx%d (column hardware: per-layer settings "
        "that differ):\n%s",
        len(configs),
        len(matrices),
        f"{coverage.cells:,}",
        coverage.summary(),
        execution,
        hardware.weight_bits,
        hardware.tile_rows,
        hardware.tile_cols,
        aligned_table(rows),
    )


def _plan(
    model: Model,
    hardware: HardwareConfig,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    filter_fn: FilterFn | None,
    layer_hardware: LayerHardware | None,
) -> tuple[_Walk, list[_Matrix], dict[str, HardwareConfig], Coverage]:
    """Checked arguments -> (walk, selected matrices, their configs, coverage)."""
    if not isinstance(hardware, HardwareConfig):
        raise TypeError(
            f"hardware must be a HardwareConfig, got {type(hardware).__name__}; build one with "
            "HardwareConfig(...) or HardwareConfig.preset(name)."
        )
    for argument, value in (("include", include), ("exclude", exclude)):
        if isinstance(value, str):
            raise TypeError(f"{argument} must be a list of patterns, got the string {value!r}.")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool, got {filter_fn!r}.")
    checked = check_layer_hardware(layer_hardware)
    walk = _find_matrices(model)
    selected = _select(walk, include, exclude, filter_fn)
    configs = _layer_configs(walk, selected, hardware, checked)
    return walk, selected, configs, _coverage(model, walk, selected, configs)


def coverage(
    model: Model,
    hardware: HardwareConfig,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    filter_fn: FilterFn | None = None,
    layer_hardware: LayerHardware | None = None,
) -> Coverage:
    """What `convert` with these arguments would map (a dry run: the model is not changed):
    every parameter of the model by mapping, and the cells of the selection."""
    return _plan(model, hardware, include, exclude, filter_fn, layer_hardware)[3]


def convert(
    model: Model,
    hardware: HardwareConfig,
    execution: str = "fake_quant",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    filter_fn: FilterFn | None = None,
    layer_hardware: LayerHardware | None = None,
    max_cells: int | None = None,
) -> Model:
    """Map the selected weight matrices of ``model`` onto hardware, in place; returns ``model``.

    ``model``: a module, or a mapping of names to modules (each a root; names get the key as
    prefix). ``include``: patterns (module docstring); None = the default mapping for what the
    model contains (`mappings.default_mapping`; with ``filter_fn``, every matrix).
    ``exclude``: patterns removed from the selection.
    ``filter_fn(module, name)``: keep a selected matrix only if it returns True. Each explicit
    pattern must select something; layers converted by an earlier call are left as they are.
    ``layer_hardware``: per-layer settings {pattern: {HardwareConfig field: value}} (module
    doc); each pattern must select a mapped matrix. ``max_cells``: warn (naming the layers
    responsible) when the selection creates more cells (None: `coverage.CELL_BUDGET_FACTOR`
    times the cells of every model parameter mapped once). Logs a table of every mappable
    weight matrix with its mapping and per-layer settings, and the coverage of the whole model.
    """
    execution = check_execution(execution)
    if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, int)):
        raise TypeError(f"max_cells must be an int (cells) or None, got {max_cells!r}.")
    walk, selected, configs, covered = _plan(
        model, hardware, include, exclude, filter_fn, layer_hardware
    )
    limit = _default_max_cells(covered, hardware) if max_cells is None else max_cells
    warning = covered.cell_warning(limit)
    if warning is not None:
        logger.warning("Memristor conversion: %s", warning)
    _map_selected(selected, configs, execution)
    _log_table(walk.matrices, configs, execution, hardware, covered)
    return model


def layer_configs(model: Model) -> dict[str, HardwareConfig]:
    """{qualified name: hardware config} of every mapped matrix of ``model`` (its own
    settings: per-layer fields, and the current chip seed)."""
    return {matmul.name: matmul.hardware for matmul in hardware_matmuls(model)}


def hardware_layers(model: Model) -> Iterator[tuple[str, torch.nn.Module]]:
    """(qualified name, layer) of every converted layer (Linear, Conv, attention) in ``model``."""
    for key, root in _roots(model):
        for name, module in root.named_modules(prefix=key):
            if isinstance(module, HardwareLayer):
                yield name, module


def hardware_matmuls(model: Model) -> list[HardwareMatmul]:
    """Every `HardwareMatmul` of ``model`` (one per mapped weight matrix)."""
    seen: dict[int, HardwareMatmul] = {}
    for _, root in _roots(model):
        for module in root.modules():
            if isinstance(module, HardwareMatmul):
                seen.setdefault(id(module), module)
    if not seen:
        raise ValueError("The model has no converted layers; call convert(model, hardware) first.")
    return list(seen.values())


def set_execution(model: Model, mode: str) -> None:
    """Switch every converted layer of ``model`` to ``mode`` (digital, fake_quant or analog)."""
    mode = check_execution(mode)
    for matmul in hardware_matmuls(model):
        matmul.execution = mode


def set_chip_seed(model: Model, seed: int) -> None:
    """Use chips of global ``seed`` from now on (programmed lazily at the next analog read).

    Each layer's chip is seeded by (seed, layer name), so every rank and every run with this
    seed gets the same chips. Quantizers are not touched.
    """
    for matmul in hardware_matmuls(model):
        matmul.set_chip_seed(seed)


def program(model: Model, seed: int | None = None) -> None:
    """Program every converted layer onto fresh chips now (seed None keeps the current seed)."""
    if seed is not None:
        set_chip_seed(model, seed)
    for _, layer in hardware_layers(model):
        layer.program()


def quantizer_state_dict(model: Model) -> dict[str, Tensor]:
    """Calibration state of every layer: ``{"<layer name>.<key>": tensor}`` (CPU copies)."""
    state: dict[str, Tensor] = {}
    for matmul in hardware_matmuls(model):
        for key, value in matmul.quantizer_state().items():
            full_key = f"{matmul.name}.{key}"
            if full_key in state:
                raise ValueError(
                    f"Two hardware layers are named {matmul.name!r}; names must differ."
                )
            state[full_key] = value.detach().cpu()
    return state


def load_quantizer_state_dict(
    model: Model, state: Mapping[str, Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Restore calibration saved by `quantizer_state_dict`; returns (missing, unexpected) keys.

    ``strict``: raise a KeyError naming the first differences instead of skipping them.
    """
    current = quantizer_state_dict(model)
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if strict and (missing or unexpected):
        raise KeyError(
            f"Quantizer state does not match the model: missing {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{' ...' if len(unexpected) > 3 else ''}. Was it saved with other include/exclude "
            "patterns or module names? Use strict=False to load the matching layers only."
        )
    for matmul in hardware_matmuls(model):
        keys = [key[len(matmul.name) + 1 :] for key in current if key.startswith(f"{matmul.name}.")]
        layer_state = {
            key: state[f"{matmul.name}.{key}"] for key in keys if f"{matmul.name}.{key}" in state
        }
        if matmul.quantizer_state_complete(layer_state):
            matmul.load_quantizer_state(layer_state)
    return missing, unexpected
