"""The torch Synaptogen cell model against the reference ``synaptogen`` package.

Statistical checks use two-sample Kolmogorov-Smirnov tests on CELLS cells per implementation.
Threshold: the asymptotic critical value D = c(α) sqrt((n + m) / (n m)) with
c(α) = sqrt(-ln(α / 2) / 2). At α = 1e-4 and n = m = 40 000, D = 0.0157 (for comparison,
α = 1e-3 at n = m = 20 000 gives 0.0195). The file makes about 70 such comparisons, so a
correct implementation fails one by chance with probability below 0.7 % for an arbitrary seed
(the seeds are fixed, so the outcome is reproducible). Wrong models fail (checked by editing
the code): always drawing mixture component 0, reversing the VAR lag order, dropping the VAR
history or scaling σ by 1.05 each fail KS comparisons here; errors in the history bookkeeping
fail the exact recursion test, errors in the reset curve the exact switching test.

The reference is seeded by replacing its module-level numpy generator (``rng``, ``randn``,
``rand``) for the duration of a test. Pulse sequences start with a SET of all cells: before
that the reference port leaves fresh cells' reset curves uninitialized and aliases their reset
threshold with their UR feature (see `speechbrain_memristor.physics.cells`).
"""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import synaptogen.synaptogen as reference
import torch
from scipy.stats import ks_2samp

import speechbrain_memristor.physics.cells as cells_module
from speechbrain_memristor.physics.cells import CellArray
from speechbrain_memristor.physics.noise import (
    BOLTZMANN,
    ELECTRON_CHARGE,
    read_noise_variance,
    shot_and_johnson_coefficient,
)
from speechbrain_memristor.physics.params import DeviceParams, default_params_path

CELLS = 40_000
ALPHA = 1e-4
SET_VOLTAGE = -2.0
RESET_VOLTAGE = 2.0


def ks_critical_value(n: int, m: int, alpha: float = ALPHA) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def assert_same_distribution(expected, actual, what: str) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    actual = torch.as_tensor(actual).double().cpu().numpy()
    assert np.isfinite(expected).all() and np.isfinite(actual).all(), what
    statistic = ks_2samp(expected, actual).statistic
    critical = ks_critical_value(len(expected), len(actual))
    assert statistic < critical, f"{what}: KS D = {statistic:.4f} >= {critical:.4f}"


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run on one torch thread: on a shared machine, multi-threaded ops on ~1e4 elements wait
    on busy cores (10-30x slower); results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seed_reference(monkeypatch):
    """Returns a function that reseeds the reference package's module-level generator."""

    def seed(value: int) -> None:
        generator = np.random.default_rng(value)
        monkeypatch.setattr(reference, "rng", generator)
        monkeypatch.setattr(
            reference, "randn", partial(generator.standard_normal, dtype=np.float32)
        )
        monkeypatch.setattr(reference, "rand", partial(generator.random, dtype=np.float32))

    return seed


class Pair:
    """The same pulses applied to reference cells and to our cells."""

    def __init__(self, seed: int, var_order: int = 10, n: int = CELLS):
        self.reference = reference.CellArrayCPU(n, reference.load_params(p=var_order))
        self.ours = CellArray(n, var_order=var_order, generator=torch.Generator().manual_seed(seed))

    def pulse(self, volts: float | np.ndarray) -> None:
        reference.applyVoltage(self.reference, volts)
        self.ours.apply_voltage(torch.as_tensor(volts))

    def cycle(self) -> None:
        self.pulse(SET_VOLTAGE)
        self.pulse(RESET_VOLTAGE)

    def assert_features_match(self, stage: str) -> None:
        ref, ours = self.reference, self.ours
        for name, expected, actual in (
            ("HRS", reference.HRS(ref), ours.hrs),
            ("US", reference.US(ref), ours.us),
            ("LRS", reference.LRS(ref), ours.lrs),
            ("UR", reference.UR(ref), ours.ur),
            ("r", ref.r, ours.r),
        ):
            assert_same_distribution(expected, actual, f"{name} {stage}")

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """Log-features [4, n] (log10 HRS, US, log10 LRS, UR) of the reference and ours."""
        ref = self.reference.y.astype(np.float64).copy()
        ours = self.ours._features.double().numpy().copy()
        for values in (ref, ours):
            values[[0, 2]] = np.log10(values[[0, 2]])
        return ref, ours


# ------------------------------------------------------------------------------- parameters
def test_params_equal_the_reference_loader():
    ref = reference.load_params(p=10)
    ours = DeviceParams.load()
    assert ours.var_order == 10 and ours.path == default_params_path()
    np.testing.assert_array_equal(ours.hhrs_coeffs.numpy(), ref.HHRS)
    np.testing.assert_array_equal(ours.llrs_coeffs.numpy(), ref.LLRS)
    np.testing.assert_array_equal(ours.gamma.numpy(), ref.γ)
    np.testing.assert_array_equal(ours.var_matrix.numpy(), ref.VAR)
    np.testing.assert_array_equal(ours.gmm_weights.numpy(), ref.wk)
    np.testing.assert_array_equal(ours.gmm_means.numpy(), ref.μDtD.T)
    np.testing.assert_array_equal(ours.gmm_cholesky.numpy(), np.moveaxis(ref.LDtD, 2, 0))
    assert (ours.u0, ours.u_max, ours.eta) == (ref.U0, ref.Umax, ref.η)
    assert (ours.g_hhrs, ours.g_llrs) == (ref.G_HHRS, ref.G_LLRS)
    # lag 1 (the most recent cycle) multiplies the last history block of the reference
    np.testing.assert_array_equal(ours.var_lag_matrices[0].numpy(), ref.VAR[:, -4:])
    np.testing.assert_array_equal(ours.var_lag_matrices[-1].numpy(), ref.VAR[:, 4:8])
    three = DeviceParams.load(var_order=3)
    np.testing.assert_array_equal(three.var_matrix.numpy(), reference.load_params(p=3).VAR)


def test_params_curves_and_state_conversions():
    params = DeviceParams.load()
    ref = reference.default_params
    u = torch.linspace(-1.5, 1.5, 101, dtype=torch.float64)
    np.testing.assert_allclose(params.i_llrs(u).numpy(), np.polyval(ref.LLRS, u.numpy()), rtol=1e-6)
    np.testing.assert_allclose(params.i_hhrs(u).numpy(), np.polyval(ref.HHRS, u.numpy()), rtol=1e-6)
    assert params.i_llrs(u.float()).dtype == torch.float32
    torch.testing.assert_close(
        params.bound_currents(u), torch.stack([params.i_llrs(u), params.i_hhrs(u)])
    )
    ohms = torch.logspace(3, 7, 50, dtype=torch.float64)
    state = params.state_from_resistance(ohms)
    np.testing.assert_allclose(
        state.numpy(), reference.r(ohms.numpy(), ref.G_HHRS, ref.G_LLRS), rtol=1e-6
    )
    # R is defined at U0: a state made from R carries U0 / R there (up to the float32
    # rounding of the conductances, which the reference shares)
    np.testing.assert_allclose(
        params.cell_current(state, torch.tensor(params.u0, dtype=torch.float64)).numpy(),
        (params.u0 / ohms).numpy(),
        rtol=1e-5,
        atol=1e-12,
    )
    current = params.cell_current(state, u[70])
    np.testing.assert_allclose(
        params.state_from_current(current, u[70]).numpy(), state.numpy(), rtol=1e-9
    )


# ---------------------------------------------------------------------- distributions (KS)
def test_features_match_reference_at_creation_and_after_cycles(seed_reference):
    seed_reference(1)
    pair = Pair(seed=1)
    pair.assert_features_match("at creation")
    previous = None
    for cycle in range(1, 11):
        pair.cycle()
        if cycle in (1, 2, 10):
            pair.assert_features_match(f"after {cycle} cycles")
        if cycle == 9:
            previous = pair.features()
    # cycle-to-cycle changes of each cell's features probe the VAR dynamics (lags, history)
    ref_now, ours_now = pair.features()
    for index, name in enumerate(("log HRS", "US", "log LRS", "UR")):
        assert_same_distribution(
            ref_now[index] - previous[0][index],
            ours_now[index] - previous[1][index],
            f"change of {name} from cycle 9 to 10",
        )
    assert bool(pair.ours.in_hrs.all()) and not bool(pair.ours.in_lrs.any())


def test_read_currents_match_reference_in_lrs_and_hrs(seed_reference):
    seed_reference(2)
    pair = Pair(seed=2)
    pair.cycle()
    for state, volts in (("LRS", SET_VOLTAGE), ("HRS", RESET_VOLTAGE)):
        pair.pulse(volts)
        for read_voltage in (0.05, 0.2, -0.3):
            assert_same_distribution(
                reference.Iread(pair.reference, read_voltage),
                pair.ours.read(read_voltage),
                f"read current in {state} at {read_voltage} V",
            )


def test_partial_reset_sweep_matches_reference(seed_reference):
    seed_reference(3)
    pair = Pair(seed=3)
    pair.pulse(SET_VOLTAGE)
    for volts in np.linspace(0.6, 1.45, 10):
        pair.pulse(float(volts))
        for read_voltage in (0.2, float(volts)):
            assert_same_distribution(
                reference.I(pair.reference, read_voltage),
                pair.ours.current(read_voltage),
                f"current at {read_voltage:.3f} V after a {volts:.3f} V partial reset",
            )
    # a SET and a second sweep: the reset curves are recomputed from the new LRS
    pair.pulse(SET_VOLTAGE)
    for volts in (0.9, 1.2):
        pair.pulse(volts)
        assert_same_distribution(
            reference.I(pair.reference, 0.2),
            pair.ours.current(0.2),
            f"current at 0.2 V after a second sweep to {volts} V",
        )


@pytest.mark.parametrize("var_order", [10, 3])
def test_random_pulses_match_reference(seed_reference, var_order):
    """Random U(-2, 2) V pulses mix SETs, partial and full RESETs and per-cell new cycles."""
    seed_reference(4)
    pair = Pair(seed=4, var_order=var_order)
    pair.pulse(SET_VOLTAGE)
    voltages = np.random.default_rng(5).uniform(-2.0, 2.0, (25, CELLS)).astype(np.float32)
    for volts in voltages:
        pair.pulse(volts)
    pair.assert_features_match(f"after 25 random pulses (p = {var_order})")
    assert_same_distribution(
        reference.I(pair.reference, 0.2), pair.ours.current(0.2), "current after random pulses"
    )
    # State flags: same voltages, so the fractions differ only by cell-to-cell chance.
    # Bound: 4.4 standard errors of a difference of two proportions (two-sided α ≈ 1e-5).
    for name, expected, actual in (
        ("in LRS", pair.reference.inLRS, pair.ours.in_lrs),
        ("in HRS", pair.reference.inHRS, pair.ours.in_hrs),
    ):
        p_ref, p_ours = float(expected.mean()), float(actual.float().mean())
        pooled = (p_ref + p_ours) / 2
        bound = 4.4 * math.sqrt(pooled * (1 - pooled) * 2 / CELLS)
        assert abs(p_ref - p_ours) < bound, f"fraction {name}: {p_ref} vs {p_ours}"


# -------------------------------------------------------------------------------- read noise
def test_read_noise_std_matches_formula_and_reference(seed_reference):
    """Standardized read residuals (read - current) / sqrt(formula) must have mean 0, std 1.

    200 000 residuals per voltage: the sample std has a standard error of 1 / sqrt(2 N) =
    0.0016 and the mean 1 / sqrt(N) = 0.0022, so the bounds 0.01 are about 5 standard errors,
    while a missing Johnson term (20-50 % of the variance at these voltages) or a std/variance
    mix-up (factor ~1e7) is far outside them.
    """
    seed_reference(6)
    pair = Pair(seed=6, n=20_000)
    pair.cycle()
    half = np.where(np.arange(20_000) % 2 == 0, SET_VOLTAGE, 0.0).astype(np.float32)
    pair.pulse(half)  # half of the cells in LRS, half in HRS
    for volts in (0.05, 0.2, -0.3):
        ours_current = pair.ours.current(volts)
        variance = read_noise_variance(ours_current, torch.tensor(volts), 1e8, 300.0)
        residuals = torch.cat([(pair.ours.read(volts) - ours_current) for _ in range(10)])
        standardized = residuals / variance.sqrt().repeat(10)
        assert abs(float(standardized.mean())) < 0.01, volts
        assert abs(float(standardized.std()) - 1.0) < 0.01, volts
        ref_current = reference.I(pair.reference, volts).astype(np.float64)
        ref_variance = read_noise_variance(
            torch.from_numpy(ref_current), torch.tensor(volts, dtype=torch.float64), 1e8, 300.0
        ).numpy()
        ref_standardized = np.concatenate(
            [
                (reference.Iread(pair.reference, volts) - ref_current) / np.sqrt(ref_variance)
                for _ in range(10)
            ]
        )
        assert abs(ref_standardized.mean()) < 0.01 and abs(ref_standardized.std() - 1.0) < 0.01
    # temperature and bandwidth enter as documented (variance proportional per term)
    current = pair.ours.current(0.2)
    residuals = torch.cat(
        [pair.ours.read(0.2, bandwidth=1e6, temperature=0.0) - current for _ in range(10)]
    )
    shot_only = (2 * ELECTRON_CHARGE * 1e6 * current.abs()).sqrt().repeat(10)
    assert abs(float((residuals / shot_only).std()) - 1.0) < 0.01
    # at 0 V there is no current, hence no noise
    assert torch.equal(pair.ours.read(0.0), torch.zeros(20_000))


def test_noise_formula_values():
    u = torch.tensor([0.2, -0.3, 0.0])
    coefficient = shot_and_johnson_coefficient(u, 1e8, 300.0)
    expected = (
        4 * BOLTZMANN * 300.0 * 1e8 / torch.tensor([0.2, 0.3, 1e-12]) + 2 * ELECTRON_CHARGE * 1e8
    )
    torch.testing.assert_close(coefficient, expected.float())
    current = torch.tensor([4e-5, -1e-5, 0.0])
    torch.testing.assert_close(
        read_noise_variance(current, u, 1e8, 300.0), current.abs() * coefficient
    )
    with pytest.raises(ValueError, match="bandwidth"):
        shot_and_johnson_coefficient(u, -1.0, 300.0)
    with pytest.raises(ValueError, match="temperature"):
        shot_and_johnson_coefficient(u, 1e8, float("nan"))


# ------------------------------------------------------------------- exact switching rules
def test_set_and_partial_reset_follow_the_model_exactly():
    """Per-cell check of SET and partial RESET against the model's formulas in float64."""
    params = DeviceParams.load()
    cells = CellArray(5000, generator=torch.Generator().manual_seed(7))
    us_before = cells.us.clone()
    cells.apply_voltage(-0.7)
    should_set = us_before >= -0.7
    assert 0.1 < float(should_set.float().mean()) < 0.9
    assert torch.equal(cells.in_lrs, should_set)
    torch.testing.assert_close(
        cells.r[should_set], params.state_from_resistance(cells.lrs)[should_set]
    )
    cells.apply_voltage(SET_VOLTAGE)
    assert bool(cells.in_lrs.all())

    def current(state, volts):
        return params.cell_current(state.double(), torch.as_tensor(volts, dtype=torch.float64))

    threshold, start_state = cells.ur.double().clone(), cells.r.double().clone()
    first, second = 0.73, 0.8  # about the median and the 75th percentile of UR
    cells.apply_voltage(first)
    reset = threshold < first
    assert 0.1 < float(reset.double().mean()) < 0.9
    assert torch.equal(cells.in_lrs, ~reset) and not bool(cells.in_hrs.any())
    hrs_current = current(params.state_from_resistance(cells.hrs.double()), params.u_max)
    slope = (current(start_state, threshold) - hrs_current) / (
        params.u_max - threshold
    ) ** params.eta
    for volts in (first, second):
        if volts == second:
            cells.apply_voltage(second)  # cells reset at `first` continue along the same curve
        expected = slope * (params.u_max - volts) ** params.eta + hrs_current
        torch.testing.assert_close(
            current(cells.r, volts)[reset], expected[reset], rtol=1e-4, atol=1e-9
        )
    torch.testing.assert_close(
        cells.r[~reset & (threshold >= second)], start_state[~reset & (threshold >= second)].float()
    )


@pytest.mark.parametrize("var_order", [10, 3])
def test_cycle_to_cycle_features_follow_the_var_recursion(monkeypatch, var_order):
    """Recompute every cell's feature vectors in float64 with the reference's stacked VAR
    product x = VAR [ε; x(n-p); ...; x(n-1)], from the normals our cells drew (recorded),
    through full resets of all cells and random pulses that start new cycles for some.

    The innovations are recorded from torch.randn, which CellArray draws its normals with.
    """
    draws = []
    draw = torch.randn

    def recording_normal(*args, **kwargs):
        values = draw(*args, **kwargs)
        draws.append(values.double().numpy().copy())
        return values

    monkeypatch.setattr(torch, "randn", recording_normal)
    # small blocks, so that creation and new cycles run block by block
    monkeypatch.setattr(cells_module, "CPU_BLOCK_CELLS", 128)
    n = 300
    cells = CellArray(n, var_order=var_order, generator=torch.Generator().manual_seed(17))
    var = cells.params.var_matrix.double().numpy()

    history = np.zeros((n, var_order, 4))  # oldest cycle first, like the reference's Xhat
    creation = np.concatenate([d[:, :4] for d in draws])  # [cells, 12], innovation first
    history[:, -1] = creation @ var[:, :4].T
    draws.clear()

    def innovations() -> np.ndarray:
        """[cells, 4] innovations drawn since the last call (drawn as [4, cells] blocks)."""
        values = np.concatenate([d.T for d in draws]) if draws else np.zeros((0, 4))
        draws.clear()
        return values

    voltages = np.random.default_rng(18).uniform(-2.0, 2.0, (30, n)).astype(np.float32)
    pulses = [SET_VOLTAGE, RESET_VOLTAGE] * 3 + list(voltages) + [SET_VOLTAGE, RESET_VOLTAGE] * 6
    for volts in pulses:
        in_lrs = cells.in_lrs.clone()
        cells.apply_voltage(torch.as_tensor(volts))
        new_cycle = (in_lrs & ~cells.in_lrs).numpy()
        stacked = np.concatenate([innovations(), history[new_cycle].reshape(-1, 4 * var_order)], 1)
        history[new_cycle] = np.roll(history[new_cycle], -1, axis=1)
        history[new_cycle, -1] = stacked @ var.T
    assert not draws
    gamma = cells.params.gamma.double().numpy()
    transformed = np.stack([np.polyval(gamma[f], history[:, -1, f]) for f in range(4)])
    offset_scale = cells._offset_scale.double().numpy().T
    expected = offset_scale[:4] + offset_scale[4:] * transformed
    expected[0] = 10 ** expected[0]
    np.testing.assert_allclose(cells._features.double().numpy(), expected, rtol=1e-4)


def test_full_reset_starts_a_new_cycle_only_for_cells_leaving_lrs():
    cells = CellArray(3000, generator=torch.Generator().manual_seed(8))
    cells.apply_voltage(SET_VOLTAGE)
    before = cells._features.clone()
    voltages = torch.where(torch.arange(3000) % 3 == 0, 1.6, 0.0)  # 1.6 V >= Umax = 1.46 V
    cells.apply_voltage(voltages)
    reset = voltages > 0
    assert torch.equal(cells.in_hrs, reset) and torch.equal(cells.in_lrs, ~reset)
    assert bool((cells._features[:, reset] != before[:, reset]).all())
    assert torch.equal(cells._features[:, ~reset], before[:, ~reset])
    params = cells.params
    torch.testing.assert_close(cells.r[reset], params.state_from_resistance(cells.hrs)[reset])


def test_fresh_cells_start_in_hrs_as_in_the_julia_original():
    cells = CellArray(2000, generator=torch.Generator().manual_seed(9))
    assert bool(cells.in_hrs.all()) and not bool(cells.in_lrs.any())
    state, features = cells.r.clone(), cells._features.clone()
    for volts in (0.9, 1.3, RESET_VOLTAGE):  # resets of cells already in HRS change nothing
        cells.apply_voltage(volts)
    assert torch.equal(cells.r, state) and torch.equal(cells._features, features)
    torch.testing.assert_close(cells.r, cells.params.state_from_resistance(cells.hrs))


def test_current_is_the_mixture_of_the_bound_curves():
    cells = CellArray(1000, generator=torch.Generator().manual_seed(10))
    cells.apply_voltage(torch.linspace(-2.0, 2.0, 1000))
    u = torch.linspace(-0.5, 0.5, 1000)
    ref = reference.default_params
    r = cells.r.double().numpy()
    expected = (1 - r) * np.polyval(ref.LLRS, u.double().numpy()) + r * np.polyval(
        ref.HHRS, u.double().numpy()
    )
    np.testing.assert_allclose(cells.current(u).numpy(), expected, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(
        cells.current(0.3).numpy(), cells.current(torch.full((1000,), 0.3)).numpy()
    )


# ------------------------------------------------------------- determinism, memory, devices
def test_same_seed_gives_identical_cells_and_pulses():
    def run(seed):
        cells = CellArray(70_000, generator=torch.Generator().manual_seed(seed))
        for volts in (SET_VOLTAGE, 1.0, SET_VOLTAGE, RESET_VOLTAGE):
            cells.apply_voltage(volts)
        return torch.cat([cells._features.flatten(), cells.r, cells.read(0.2)])

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_scalar_and_per_cell_voltages_agree():
    results = []
    for as_tensor in (False, True):
        cells = CellArray(5000, generator=torch.Generator().manual_seed(13))
        for volts in (SET_VOLTAGE, 1.1, 1.3, SET_VOLTAGE, RESET_VOLTAGE):
            cells.apply_voltage(torch.full((5000,), volts) if as_tensor else volts)
        results.append(torch.cat([cells._features.flatten(), cells.r]))
    assert torch.equal(*results)


def test_bytes_per_cell():
    cells = CellArray(1000, generator=torch.Generator().manual_seed(14))
    assert len(cells) == 1000
    assert cells.bytes_per_cell == 78  # 62 B of state + the current cycle's normal vector
    cells.apply_voltage(SET_VOLTAGE)
    cells.apply_voltage(RESET_VOLTAGE)
    assert cells.bytes_per_cell == 62 + 16 * 10  # history of p = 10 cycles
    assert CellArray(10, var_order=1).bytes_per_cell == 78


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cells_match_cpu_cells():
    generator = torch.Generator("cuda").manual_seed(15)
    gpu = CellArray(CELLS, generator=generator)
    cpu = CellArray(CELLS, generator=torch.Generator().manual_seed(15))
    assert gpu.r.device.type == "cuda"
    for cells in (gpu, cpu):
        cells.apply_voltage(SET_VOLTAGE)
        cells.apply_voltage(1.1)
        cells.apply_voltage(SET_VOLTAGE)
        cells.apply_voltage(RESET_VOLTAGE)
    for name in ("hrs", "us", "lrs", "ur", "r"):
        assert_same_distribution(getattr(cpu, name), getattr(gpu, name), f"{name} on CUDA")
    assert_same_distribution(cpu.read(0.2), gpu.read(0.2), "read on CUDA")


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("n", [0, -5, 2.5, True, "10", np.int64(0)])
def test_invalid_cell_count(n):
    with pytest.raises(ValueError, match="n="):
        CellArray(n)


def test_invalid_voltages():
    cells = CellArray(100, generator=torch.Generator().manual_seed(16))
    for method in (cells.apply_voltage, cells.current, cells.read):
        with pytest.raises(ValueError, match="100 voltages"):
            method(torch.zeros(99))
        with pytest.raises(ValueError, match="shape"):
            method(torch.zeros(10, 10))
        with pytest.raises(ValueError, match="NaN"):
            method(float("nan"))
        bad = torch.zeros(100)
        bad[3] = float("nan")
        with pytest.raises(ValueError, match="1 NaN"):
            method(bad)
        with pytest.raises(ValueError, match="NaN or infinite"):
            method(float("inf"))
    with pytest.raises(ValueError, match="bandwidth"):
        cells.read(0.2, bandwidth=-1.0)


def test_invalid_construction_arguments():
    params = DeviceParams.load(var_order=3)
    with pytest.raises(ValueError, match="var_order=10 contradicts"):
        CellArray(10, params=params, var_order=10)
    with pytest.raises(TypeError, match="generator"):
        CellArray(10, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="var_order=0"):
        DeviceParams.load(var_order=0)


def _write_params(tmp_path, edit) -> str:
    with open(default_params_path(), encoding="utf-8") as file:
        data = json.load(file)
    edit(data)
    path = tmp_path / "params.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_missing_and_unreadable_parameter_files(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(ValueError, match="absent.json"):
        DeviceParams.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json.*not a readable JSON"):
        DeviceParams.load(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="list.json.*JSON object"):
        DeviceParams.load(listed)


@pytest.mark.parametrize("key", ["γ", "U₀", "η", "Umax", "HHRS", "LLRS", "wk", "μDtD", "LDtD"])
def test_missing_parameter_key(tmp_path, key):
    path = _write_params(tmp_path, lambda data: data.pop(key))
    with pytest.raises(ValueError, match=f"params.json.*'{key}' is missing"):
        DeviceParams.load(path)


def test_missing_var_model(tmp_path):
    def drop_high_orders(data):
        for order in range(5, 11):
            data.pop(f"VAR_{order:03d}")

    path = _write_params(tmp_path, drop_high_orders)
    with pytest.raises(ValueError, match="params.json.*'VAR_010' is missing.*available orders"):
        DeviceParams.load(path)
    assert DeviceParams.load(path, var_order=4).var_order == 4


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("γ", [[1.0, 2.0]] * 3, "shape"),
        ("LDtD", [[0.0] * 8] * 8, "shape"),
        ("μDtD", [[0.0] * 3] * 7, "shape"),
        ("VAR_010", [[0.0] * 40] * 4, "shape"),
        ("HHRS", [[1.0]], "dimension"),
        ("LLRS", [], "non-empty"),
        ("wk", [0.5, "x", 0.2], "rectangular array of numbers"),
        ("wk", [-1.0, 0.5, 0.5], "non-negative"),
        ("LLRS", [1.0, float("nan")], "non-finite"),
        ("U₀", "0.2", "must be a number"),
        ("η", -3.0, "finite positive"),
    ],
)
def test_malformed_parameter_values(tmp_path, key, value, message):
    path = _write_params(tmp_path, lambda data: data.__setitem__(key, value))
    with pytest.raises(ValueError, match=f"params.json.*'{key}'.*{message}"):
        DeviceParams.load(path)
