"""Fitted constants of the Synaptogen ReRAM cell model, read from a Synaptogen parameter file.

The file is the JSON shipped with the ``synaptogen`` package (``default_params.json``); its keys
use Unicode names: ``γ``, ``U₀``, ``η``, ``Umax``, ``HHRS``, ``LLRS``, ``wk``, ``μDtD``,
``LDtD`` and ``VAR_001`` ... ``VAR_010``.

Model summary (Hennen et al., IEEE TED 2024). A cell has a state r; its current at U volts is
``(1 - r) P_LLRS(U) + r P_HHRS(U)`` amperes. Each switching cycle has a feature vector
``y = [HRS, US, LRS, UR]`` (HRS and LRS in ohms, US and UR in volts) obtained from a standard
normal vector x by ``y = μ + σ Γ(x)`` (HRS taken as log10 ohms before exponentiation), where Γ
is a per-feature polynomial, (μ, σ) are per-cell offsets and scales drawn once from a Gaussian
mixture, and x follows a VAR(p) process over the cell's cycles.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

FEATURE_NAMES = ("hrs", "us", "lrs", "ur")
"""Order of the per-cycle features in every feature tensor."""
HRS, US, LRS, UR = range(len(FEATURE_NAMES))
N_FEATURES = len(FEATURE_NAMES)

_VAR_KEY = re.compile(r"VAR_(\d+)$")


def polyval(coefficients: Sequence[float], x: Tensor) -> Tensor:
    """Polynomial with ``coefficients`` (highest power first, like numpy.polyval) at x."""
    result = torch.full_like(x, coefficients[0])
    for coefficient in coefficients[1:]:
        result.mul_(x).add_(coefficient)
    return result


def default_params_path() -> str:
    """Path of the parameter file installed with the ``synaptogen`` package."""
    try:
        folder = importlib.resources.files("synaptogen")
    except ModuleNotFoundError as error:
        raise ValueError(
            "No device parameter file given and the 'synaptogen' package, whose "
            "default_params.json is the default, is not installed; install it with "
            "`pip install synaptogen` or pass a parameter file path."
        ) from error
    return os.fspath(folder.joinpath("default_params.json"))


@dataclass(frozen=True, eq=False)
class DeviceParams:
    """Synaptogen model constants as float32 CPU tensors and Python floats.

    Shapes: K mixture components, p = ``var_order``, 4 features ordered as FEATURE_NAMES.
    ``var_matrix`` is [4, 4 (p + 1)]: the first 4 columns multiply the innovation (a standard
    normal vector), then p blocks of 4 columns multiply the history, oldest cycle first (the
    last block multiplies the most recent cycle).
    """

    path: str
    var_order: int
    u0: float  # V, voltage defining resistance R = U0 / I(U0)
    u_max: float  # V, a reset at or above it reaches the cycle's HRS fully
    eta: float  # curvature exponent of the partial-reset transition current
    hhrs_coeffs: Tensor  # [deg + 1], A/V^k, highest power first, zero constant term
    llrs_coeffs: Tensor  # [deg + 1], A/V^k, highest power first, zero constant term
    g_hhrs: float  # S, P_HHRS(U0) / U0 (negative: the HHRS curve is an extreme bound)
    g_llrs: float  # S, P_LLRS(U0) / U0
    gamma: Tensor  # [4, deg + 1], per-feature transform Γ, highest power first
    gmm_weights: Tensor  # [K], mixture weights (not necessarily normalized)
    gmm_means: Tensor  # [K, 8], mean of (μ, σ) per component
    gmm_cholesky: Tensor  # [K, 8, 8], lower Cholesky factor of the (μ, σ) covariance
    var_matrix: Tensor  # [4, 4 (p + 1)]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, var_order: int = 10) -> DeviceParams:
        """Read a Synaptogen parameter JSON file (default: the one installed with synaptogen).

        ``var_order`` p selects the VAR model: the file's smallest order >= p, truncated to p
        lags like the reference package does. Raises ValueError naming the file and the key
        for a missing file, invalid JSON, missing keys, wrong shapes or non-finite values.
        """
        path = default_params_path() if path is None else os.fspath(path)
        if isinstance(var_order, bool) or not isinstance(var_order, int) or var_order < 1:
            raise ValueError(f"var_order={var_order!r} is invalid; use a positive integer.")
        reader = _KeyReader(path, _read_json(path))
        gamma, u0, u_max, eta, hhrs, llrs = _read_curves(reader)
        weights, means, cholesky = _read_mixture(reader)
        n_components, n_dtd = weights.shape[0], 2 * N_FEATURES
        var_full = _read_var(reader, var_order)

        hhrs32 = hhrs.float()
        llrs32 = llrs.float()
        u0_32 = torch.tensor(u0, dtype=torch.float32)
        g_hhrs = float(polyval(hhrs32.tolist(), u0_32) / u0_32)
        g_llrs = float(polyval(llrs32.tolist(), u0_32) / u0_32)
        if g_llrs == g_hhrs:
            reader.fail("LLRS", "gives the same conductance at U₀ as HHRS")
        return cls(
            path=path,
            var_order=var_order,
            u0=float(u0_32),
            u_max=float(torch.tensor(u_max, dtype=torch.float32)),
            eta=float(torch.tensor(eta, dtype=torch.float32)),
            hhrs_coeffs=hhrs32,
            llrs_coeffs=llrs32,
            g_hhrs=g_hhrs,
            g_llrs=g_llrs,
            gamma=gamma.float(),
            gmm_weights=weights.float(),
            gmm_means=means.T.float().contiguous(),
            # LDtD columns hold the K factors side by side: component k is columns 8k .. 8k+7.
            gmm_cholesky=cholesky.reshape(n_dtd, n_components, n_dtd)
            .permute(1, 0, 2)
            .float()
            .contiguous(),
            var_matrix=var_full[:, : N_FEATURES * (var_order + 1)].float().contiguous(),
        )

    @property
    def var_innovation(self) -> Tensor:
        """[4, 4]: VAR matrix applied to the standard normal innovation."""
        return self.var_matrix[:, :N_FEATURES]

    @property
    def var_lag_matrices(self) -> Tensor:
        """[p, 4, 4]: VAR matrix of lag 1 (the most recent cycle) first."""
        blocks = self.var_matrix[:, N_FEATURES:].reshape(N_FEATURES, self.var_order, N_FEATURES)
        return blocks.permute(1, 0, 2).flip(0)

    def i_hhrs(self, u: Tensor) -> Tensor:
        """Current of the HHRS bound curve at u volts, in amperes (dtype and device of u)."""
        return polyval(self.hhrs_coeffs.tolist(), u)

    def i_llrs(self, u: Tensor) -> Tensor:
        """Current of the LLRS bound curve at u volts, in amperes (dtype and device of u)."""
        return polyval(self.llrs_coeffs.tolist(), u)

    def bound_currents(self, u: Tensor) -> Tensor:
        """[2, *u.shape]: currents (A) of the LLRS and HHRS bound curves at u volts.

        Both polynomials are evaluated together (dtype and device of u).
        """
        degree = max(len(self.llrs_coeffs), len(self.hhrs_coeffs))
        coefficients = torch.zeros(2, degree, dtype=u.dtype)
        for row, curve in enumerate((self.llrs_coeffs, self.hhrs_coeffs)):
            coefficients[row, degree - len(curve) :] = curve  # pad with leading zeros
        coefficients = coefficients.to(u.device).view(2, degree, *([1] * u.ndim))
        currents = coefficients[:, 0].expand(2, *u.shape)
        for power in range(1, degree):
            currents = torch.addcmul(coefficients[:, power], currents, u)
        return currents

    def cell_current(self, state: Tensor, u: Tensor) -> Tensor:
        """Noise-free current (A) of cells in state r at u volts: (1 - r) P_LLRS + r P_HHRS."""
        llrs, hhrs = self.bound_currents(u)
        return torch.addcmul(llrs, state, hhrs - llrs)

    def state_from_resistance(self, ohms: Tensor) -> Tensor:
        """State r of cells with resistance ``ohms`` at U0: (G_LLRS - 1/R) / (G_LLRS - G_HHRS)."""
        return (self.g_llrs - ohms.reciprocal()) * (1.0 / (self.g_llrs - self.g_hhrs))

    def state_from_current(self, current: Tensor, u: Tensor) -> Tensor:
        """State r of cells that carry ``current`` amperes at u volts."""
        llrs, hhrs = self.bound_currents(u)
        return (current - llrs) / (hhrs - llrs)


@functools.lru_cache(maxsize=8)
def load_device_params(path: str | None = None, var_order: int = 10) -> DeviceParams:
    """The parameters in ``path`` (None: synaptogen's file), read once per (path, var_order).

    The one cache of parameter files in the package: every other module asks this function.
    """
    return DeviceParams.load(path, var_order=var_order)


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise ValueError(f"Device parameter file {path!r} does not exist or is not a file.")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"Device parameter file {path!r} is not a readable JSON file: {error}"
        ) from error


class _KeyReader:
    """Reads validated entries of one parameter file, failing with the file and key named."""

    def __init__(self, path: str, data: Any):
        if not isinstance(data, dict):
            raise ValueError(
                f"Device parameter file {path!r} must hold a JSON object, "
                f"got {type(data).__name__}."
            )
        self.path = path
        self.data = data

    def fail(self, key: str, problem: str) -> None:
        raise ValueError(f"Device parameter file {self.path!r}: key {key!r} {problem}.")

    def _get(self, key: str) -> Any:
        if key not in self.data:
            self.fail(key, "is missing")
        return self.data[key]

    def array(self, key: str, ndim: int) -> Tensor:
        try:
            values = torch.tensor(self._get(key), dtype=torch.float64)
        except (TypeError, ValueError) as error:
            self.fail(key, f"is not a rectangular array of numbers ({error})")
        if values.ndim != ndim or values.numel() == 0:
            self.fail(
                key, f"has shape {tuple(values.shape)}, expected {ndim} non-empty dimension(s)"
            )
        if not bool(torch.isfinite(values).all()):
            self.fail(key, "contains non-finite values")
        return values

    def positive_scalar(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"must be a number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            self.fail(key, f"must be a finite positive number, got {value!r}")
        return float(value)

    def var_key(self, var_order: int) -> str:
        """Key of the VAR model with the smallest order >= var_order."""
        keys = {int(m.group(1)): m.group(0) for m in map(_VAR_KEY.match, self.data) if m}
        usable = sorted(order for order in keys if order >= var_order)
        if not usable:
            self.fail(
                f"VAR_{var_order:03d}",
                f"is missing: no VAR model of order >= {var_order} "
                f"(available orders: {sorted(keys) or 'none'}); use a smaller var_order",
            )
        return keys[usable[0]]


def _read_curves(reader: _KeyReader) -> tuple[Tensor, float, float, float, Tensor, Tensor]:
    """Γ, U0, Umax, η and the HHRS / LLRS polynomials, checked."""
    gamma = reader.array("γ", ndim=2)
    if gamma.shape[0] != N_FEATURES or gamma.shape[1] < 1:
        shape = tuple(gamma.shape)
        reader.fail("γ", f"has shape {shape}, expected [{N_FEATURES}, degree + 1]")
    u0 = reader.positive_scalar("U₀")
    u_max = reader.positive_scalar("Umax")
    eta = reader.positive_scalar("η")
    return gamma, u0, u_max, eta, reader.array("HHRS", ndim=1), reader.array("LLRS", ndim=1)


def _read_mixture(reader: _KeyReader) -> tuple[Tensor, Tensor, Tensor]:
    """Device-to-device mixture weights [K], means [8, K] and Cholesky factors [8, 8 K]."""
    weights = reader.array("wk", ndim=1)
    n_components = weights.shape[0]
    if n_components < 1 or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        reader.fail("wk", "must hold at least one non-negative weight with a positive sum")
    n_dtd = 2 * N_FEATURES
    means = reader.array("μDtD", ndim=2)
    if tuple(means.shape) != (n_dtd, n_components):
        reader.fail("μDtD", f"has shape {tuple(means.shape)}, expected [{n_dtd}, {n_components}]")
    cholesky = reader.array("LDtD", ndim=2)
    if tuple(cholesky.shape) != (n_dtd, n_dtd * n_components):
        reader.fail(
            "LDtD",
            f"has shape {tuple(cholesky.shape)}, expected [{n_dtd}, {n_dtd * n_components}]",
        )
    return weights, means, cholesky


def _read_var(reader: _KeyReader, var_order: int) -> Tensor:
    """The file's VAR matrix of the smallest order >= ``var_order`` (not yet truncated)."""
    var_key = reader.var_key(var_order)
    var_full = reader.array(var_key, ndim=2)
    file_order = int(_VAR_KEY.match(var_key).group(1))
    expected = (N_FEATURES, N_FEATURES * (file_order + 1))
    if tuple(var_full.shape) != expected:
        reader.fail(var_key, f"has shape {tuple(var_full.shape)}, expected {list(expected)}")
    return var_full
