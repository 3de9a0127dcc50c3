"""Programming options: per-array initial cycles, write-verify, stuck-at faults, statistics."""

from __future__ import annotations

import math

import pytest
import torch

from speechbrain_memristor.config import CONFIG_VERSION, HardwareConfig
from speechbrain_memristor.crossbar import Crossbar, programming
from speechbrain_memristor.crossbar.layout import TileLayout
from speechbrain_memristor.crossbar.programming import (
    array_cycle_voltages,
    array_indices,
    program_chip,
    program_states,
    stuck_codes,
)
from speechbrain_memristor.layers.linear import MemristorLinear
from speechbrain_memristor.physics.cell_models import (
    FREE,
    STUCK_HRS,
    STUCK_LRS,
    cell_model,
    device_params,
    verify_window,
)
from speechbrain_memristor.physics.cells import CellArray
from speechbrain_memristor.util.seeding import stable_seed

CHUNK = 4096  # small chunks: several per test layer, fast


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(programming, "PROGRAMMING_CHUNK_CELLS", CHUNK)


def random_bits(count: int, seed: int = 0, ones: float = 0.4) -> torch.Tensor:
    return torch.rand(count, generator=torch.Generator().manual_seed(seed)) < ones


def reference_per_cell(bits: torch.Tensor, hardware: HardwareConfig, chip_seed: int):
    """The first version's programming, written out: per chunk a generator seeded by (chip
    seed, chunk index), fresh cells, per-cell U(-2, 2) V cycles, reset, set on the ones."""
    params = device_params(hardware)
    states = []
    for index, start in enumerate(range(0, bits.shape[0], CHUNK)):
        chunk = bits[start : start + CHUNK]
        generator = torch.Generator().manual_seed(stable_seed(chip_seed, index))
        cells = CellArray(chunk.shape[0], params=params, generator=generator)
        for _ in range(hardware.initial_cycles):
            cells.apply_voltage((torch.rand(chunk.shape[0], generator=generator) * 2 - 1) * 2.0)
        cells.apply_voltage(torch.full((chunk.shape[0],), hardware.reset_voltage))
        cells.apply_voltage(torch.where(chunk, hardware.set_voltage, 0.0))
        states.append(cells.r)
    return torch.cat(states)


def conductances(states: torch.Tensor, hardware: HardwareConfig) -> torch.Tensor:
    voltage, _, _ = verify_window(hardware)
    return cell_model(hardware).resistance_conductance(states, voltage)


def test_default_and_verify_off_reproduce_the_per_cell_reference_bit_for_bit():
    bits = random_bits(3 * CHUNK + 100)
    for cycles in (0, 2):
        hardware = HardwareConfig(initial_cycles=cycles)
        expected = reference_per_cell(bits, hardware, chip_seed=11)
        states, stats = program_states(bits, hardware, 11)
        assert torch.equal(states, expected)
        # Verify off: the verify settings change nothing.
        other = hardware.replace(verify_max_attempts=2, verify_lrs_max_ohms=4.5e3)
        assert torch.equal(program_states(bits, other, 11)[0], expected)
        count = bits.shape[0]
        assert (stats.cells, stats.reset_pulses, stats.set_pulses) == (
            count,
            count,
            int(bits.sum()),
        )
        assert stats.cycle_pulses == cycles * count and stats.verify_reads == 0
        assert stats.attempts == () and stats.unverified == 0


def test_zero_volt_pulse_changes_no_cell_and_the_subset_pulse_equals_it():
    generator = torch.Generator().manual_seed(3)
    cells = CellArray(20000, generator=generator)
    for _ in range(3):  # a mix of LRS, HRS and partially reset cells
        cells.apply_voltage((torch.rand(20000, generator=generator) * 2 - 1) * 2.0)
    snapshot = [t.clone() for t in (cells.r, cells.in_lrs, cells.in_hrs, cells.lrs, cells.hrs)]
    cells.apply_voltage(0.0)
    after = (cells.r, cells.in_lrs, cells.in_hrs, cells.lrs, cells.hrs)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after, strict=True))

    # A pulse on a subset of cells == the same pulse with 0 V elsewhere (sets, full and
    # partial resets, new cycles).
    twins = [CellArray(5000, generator=torch.Generator().manual_seed(4)) for _ in range(2)]
    pulses = torch.Generator().manual_seed(5)
    for _ in range(6):
        subset = (torch.rand(5000, generator=pulses) < 0.3).nonzero().squeeze(1)
        volts = (torch.rand(subset.numel(), generator=pulses) * 2 - 1) * 2.0
        full = torch.zeros(5000).index_copy_(0, subset, volts)
        twins[0].apply_voltage(full)
        twins[1].apply_voltage(volts, cells=subset)
        for name in ("in_lrs", "in_hrs", "lrs", "hrs", "us", "ur"):
            assert torch.equal(getattr(twins[0], name), getattr(twins[1], name)), name
        # States equal up to float32 rounding: vectorized and scalar loops of the same
        # elementwise kernel may round one cell in a few thousand by one ulp (measured: 1).
        torch.testing.assert_close(twins[0].r, twins[1].r, rtol=0, atol=2e-7)
        assert int((twins[0].r != twins[1].r).sum()) <= 5


def test_a_taken_subset_switches_like_those_cells_in_place():
    parent = CellArray(5000, generator=torch.Generator().manual_seed(7))
    twin = CellArray(5000, generator=torch.Generator().manual_seed(7))
    parent.apply_voltage(2.0)
    twin.apply_voltage(2.0)
    chosen = torch.arange(3, 5000, 7)
    taken = parent.take(chosen)
    before = parent.r.clone()
    pulses = torch.Generator().manual_seed(8)
    for _ in range(5):  # sets, full and partial resets, new cycles
        volts = (torch.rand(chosen.numel(), generator=pulses) * 2 - 1) * 2.0
        taken.apply_voltage(volts)
        twin.apply_voltage(volts, cells=chosen)
    assert torch.equal(parent.r, before)  # the parent is unchanged
    for name in ("in_lrs", "in_hrs", "lrs", "hrs", "us", "ur"):
        assert torch.equal(getattr(taken, name), getattr(twin, name)[chosen]), name
    torch.testing.assert_close(taken.r, twin.r[chosen], rtol=0, atol=2e-7)


def test_array_indices_follow_the_tile_layout():
    layout = TileLayout(in_features=10, out_features=7, tile_rows=4, tile_cols=3)
    planes = 2
    expected = torch.empty(planes, 2, 10, 7, dtype=torch.int64)
    for plane in range(planes):
        for side in range(2):
            for row in range(10):
                for column in range(7):
                    tile = (plane * 2 + side) * layout.tiles_in + row // 4
                    expected[plane, side, row, column] = tile * layout.tiles_out + column // 3
    assert torch.equal(array_indices(0, expected.numel(), layout), expected.flatten())
    assert torch.equal(array_indices(100, 200, layout), expected.flatten()[100:200])


def test_per_array_cycles_apply_one_voltage_per_array_and_pulse(monkeypatch):
    hardware = HardwareConfig(
        initial_cycles=2, initial_cycle_mode="per_array", tile_rows=16, tile_cols=8
    )
    weight = torch.randint(-3, 4, (20, 40), generator=torch.Generator().manual_seed(0))
    layout = TileLayout.from_config(40, 20, hardware)
    cells_total = 2 * 2 * 40 * 20
    arrays = array_indices(0, cells_total, layout)
    assert int(arrays.max()) + 1 == 2 * 2 * 3 * 3  # planes x sides x tiles_in x tiles_out
    voltages = array_cycle_voltages(int(arrays.max()) + 1, hardware, chip_seed=9)

    recorded = []
    original = CellArray.apply_voltage

    def record(self, u, cells=None):
        recorded.append((len(self), torch.as_tensor(u).clone()))
        original(self, u, cells)

    monkeypatch.setattr(CellArray, "apply_voltage", record)
    states = program_chip(weight, hardware, chip_seed=9)
    monkeypatch.undo()
    # Per chunk: 2 cycle pulses, reset, set. The cycle pulses of all chunks, in cell order:
    chunks = math.ceil(cells_total / CHUNK)
    assert len(recorded) == 4 * chunks
    for cycle in range(2):
        pulses = torch.cat([recorded[4 * c + cycle][1] for c in range(chunks)])
        assert torch.equal(pulses, voltages[cycle, arrays])
        for array in range(int(arrays.max()) + 1):  # one voltage per array
            assert pulses[arrays == array].unique().numel() == 1
        assert pulses.unique().numel() == int(arrays.max()) + 1

    # Brute force: cells cycled by hand with those voltages, one chunk at a time.
    bits_pos, bits_neg = weight.t() > 0, weight.t() < 0
    magnitude = weight.t().abs()
    planes = torch.stack([(magnitude >> k) & 1 for k in range(2)]).bool()
    bits = torch.stack([planes & bits_pos, planes & bits_neg], dim=1).flatten()
    expected = []
    for index, start in enumerate(range(0, cells_total, CHUNK)):
        chunk = slice(start, min(start + CHUNK, cells_total))
        generator = torch.Generator().manual_seed(stable_seed(9, index))
        cells = CellArray(chunk.stop - start, params=device_params(hardware), generator=generator)
        for cycle in range(2):
            cells.apply_voltage(voltages[cycle, arrays[chunk]])
        cells.apply_voltage(2.0)
        cells.apply_voltage(torch.where(bits[chunk], -2.0, 0.0))
        expected.append(cells.r)
    expected = torch.cat(expected).view(2, 2, 40, 20)
    assert torch.equal(states.states_pos, expected[:, 0])
    assert torch.equal(states.states_neg, expected[:, 1])
    # The per-array voltages do not depend on the chunking.
    monkeypatch.setattr(programming, "PROGRAMMING_CHUNK_CELLS", 1000)
    recorded.clear()
    monkeypatch.setattr(CellArray, "apply_voltage", record)
    program_chip(weight, hardware, chip_seed=9)
    pulses = torch.cat([u for _, u in recorded[::4]])  # first cycle of each chunk
    assert torch.equal(pulses, voltages[0, arrays])


def test_write_verify_puts_cells_in_their_windows_and_narrows_the_spread():
    bits = random_bits(12 * CHUNK, seed=1, ones=0.5)
    off = HardwareConfig()
    on = HardwareConfig(write_verify=True)
    voltage, lrs_max, hrs_min = verify_window(on)
    # The documented defaults: 95th LRS / 5th HRS percentile of fresh cells at U0 = 0.2 V.
    assert voltage == pytest.approx(0.2)
    assert lrs_max == pytest.approx(4.94e3, rel=2e-3) and hrs_min == pytest.approx(36.5e3, rel=2e-3)
    states_off, _ = program_states(bits, off, 5)
    states_on, stats = program_states(bits, on, 5)
    assert torch.equal(program_states(bits, on, 5)[0], states_on)  # same seed, same chip
    assert not torch.equal(program_states(bits, on, 6)[0], states_on)

    conductance = conductances(states_on, on)
    outside = torch.where(bits, conductance < 1 / lrs_max, conductance > 1 / hrs_min)
    assert int(outside.sum()) == stats.unverified
    assert stats.unverified < 0.005 * bits.numel()  # measured 0.1-0.2 %
    assert sum(stats.attempts) + stats.unverified == stats.cells == bits.numel()
    assert len(stats.attempts) == on.verify_max_attempts
    # ~5 % of the cells fail the first read (the window quantiles), most pass at attempt 2.
    assert 0.03 < 1 - stats.attempts[0] / stats.cells < 0.08
    assert stats.attempts[1] > stats.attempts[2] > 0
    # Each attempt after the first re-reads and re-cycles (2 pulses) the cells that failed.
    failed_before = [stats.cells - sum(stats.attempts[:k]) for k in range(1, 5)]
    recycled = sum(f for f in failed_before if f > 0)
    assert stats.verify_reads == stats.cells + recycled
    assert stats.reset_pulses == stats.cells + recycled
    assert stats.set_pulses == int(bits.sum()) + recycled

    def spread(states, holding):
        ohms = 1 / conductances(states, off)[holding].double()
        low, high = torch.quantile(ohms, torch.tensor([0.01, 0.99], dtype=torch.float64))
        return float(low), float(high)

    lrs_off, lrs_on = spread(states_off, bits), spread(states_on, bits)
    hrs_off, hrs_on = spread(states_off, ~bits), spread(states_on, ~bits)
    # Measured (200 k cells): LRS 1st-99th percentile 4.06-5.17 kohm without verify,
    # 4.06-4.93 kohm with it (width 1.11 -> 0.87 kohm); HRS 25.9-243 kohm -> 38.0-245 kohm
    # (ratio 9.4 -> 6.4).
    assert lrs_on[1] - lrs_on[0] < 0.85 * (lrs_off[1] - lrs_off[0])
    assert hrs_on[1] / hrs_on[0] < 0.8 * hrs_off[1] / hrs_off[0]
    assert lrs_on[1] < lrs_max * 1.001 and hrs_on[0] > hrs_min * 0.999


def test_write_verify_lowers_the_layer_error_against_fake_quant():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    inputs = torch.randn(64, 256)
    errors = {}
    for verify in (False, True):
        hardware = HardwareConfig(
            write_verify=verify, read_noise="off", adc_precision_bits=None, adc_range_bits=None
        )
        layer = MemristorLinear.from_linear(linear, hardware, "fake_quant", name="layer")
        layer.train()
        layer(inputs)
        layer.eval()
        with torch.no_grad():
            reference = layer(inputs)
            layer.execution = "analog"
            output = layer(inputs)
        errors[verify] = float((output - reference).norm() / reference.norm())
    # Measured relative RMS error 0.077 without verify, 0.064 with it (chip seeds 0-2:
    # 0.076-0.078 and 0.063-0.064): narrower LRS/HRS windows, less HRS leakage spread.
    assert errors[True] < 0.9 * errors[False], errors
    assert 0.05 < errors[True] < 0.075 and 0.07 < errors[False] < 0.085, errors


def test_stuck_fractions_lie_within_binomial_bounds():
    hardware = HardwareConfig(cell_model="ideal", stuck_lrs_rate=0.01, stuck_hrs_rate=0.03)
    count = 10**6
    codes = stuck_codes(count, hardware, chip_seed=2)
    # Each cell is stuck in LRS with probability p independently, so the count is
    # Binomial(n, p): mean n p, std sqrt(n p (1 - p)); 4 std (about 99.994 % two-sided) is
    # about +-398 cells for p = 0.01 and +-682 for p = 0.03.
    for code, rate in ((STUCK_LRS, 0.01), (STUCK_HRS, 0.03)):
        observed = int((codes == code).sum())
        assert abs(observed - count * rate) <= 4 * math.sqrt(count * rate * (1 - rate))
    # Ideal cells: a 10^6-cell layer programs in a moment; the statistics count the faults.
    bits = random_bits(count, seed=4)
    states, stats = program_states(bits, hardware, 2)
    assert (stats.stuck_lrs, stats.stuck_hrs) == (
        int((codes == STUCK_LRS).sum()),
        int((codes == STUCK_HRS).sum()),
    )
    assert torch.equal(states[codes == STUCK_LRS], torch.zeros(stats.stuck_lrs))
    assert torch.equal(states[codes == STUCK_HRS], torch.ones(stats.stuck_hrs))
    free = codes == FREE
    assert torch.equal(states[free], torch.where(bits[free], 0.0, 1.0))
    assert stuck_codes(count, hardware.replace(stuck_lrs_rate=0.0, stuck_hrs_rate=0.0), 2) is None


def test_stuck_cells_keep_their_state_through_programming_and_verify():
    hardware = HardwareConfig(
        stuck_lrs_rate=0.05, stuck_hrs_rate=0.05, write_verify=True, initial_cycles=2
    )
    count = CHUNK  # one chunk: its generator gives the fresh cells' features
    bits = random_bits(count, seed=6, ones=0.5)
    states, stats = program_states(bits, hardware, 8)
    codes = stuck_codes(count, hardware, 8)
    params = device_params(hardware)
    fresh = CellArray(
        count, params=params, generator=torch.Generator().manual_seed(stable_seed(8, 0))
    )
    lrs_state = params.state_from_resistance(fresh.lrs)
    assert torch.equal(states[codes == STUCK_LRS], lrs_state[codes == STUCK_LRS])
    assert torch.equal(states[codes == STUCK_HRS], fresh.r[codes == STUCK_HRS])
    # A stuck-LRS cell holding 0 (or stuck-HRS holding 1) never verifies; almost every free
    # cell does.
    wrong = ((codes == STUCK_LRS) & ~bits) | ((codes == STUCK_HRS) & bits)
    _, lrs_max, hrs_min = verify_window(hardware)
    conductance = conductances(states, hardware)
    outside = torch.where(bits, conductance < 1 / lrs_max, conductance > 1 / hrs_min)
    assert bool(outside[wrong].all())
    assert int(outside.sum()) == stats.unverified
    assert stats.unverified - int(wrong.sum()) < 0.01 * count
    assert (stats.stuck_lrs, stats.stuck_hrs) == (
        int((codes == STUCK_LRS).sum()),
        int((codes == STUCK_HRS).sum()),
    )


def test_chip_carries_its_programming_statistics_and_costs():
    hardware = HardwareConfig(
        write_verify=True,
        program_pulse_energy=2e-12,
        program_pulse_time=5e-8,
        verify_read_energy=3e-13,
        verify_read_time=2e-8,
    )
    weight = torch.randint(-3, 4, (30, 50), generator=torch.Generator().manual_seed(1))
    chip = Crossbar.program(weight, 1.0, hardware, chip_seed=4)
    stats = chip.programming
    assert stats.cells == chip.inventory().cells
    assert stats.pulses == stats.cycle_pulses + stats.reset_pulses + stats.set_pulses
    assert stats.energy(hardware) == pytest.approx(
        stats.pulses * 2e-12 + stats.verify_reads * 3e-13
    )
    assert stats.time(hardware) == pytest.approx(stats.pulses * 5e-8 + stats.verify_reads * 2e-8)
    states = Crossbar(*chip.states(), 1.0, hardware, read_seed=0)
    assert states.programming is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("initial_cycle_mode", "per_tile", "expected one of 'per_cell', 'per_array'"),
        ("write_verify", "yes", "expected true or false"),
        ("verify_max_attempts", 0, "expected an integer in [1, 1000]"),
        ("verify_lrs_max_ohms", -1.0, "expected a finite number in (0.0, inf)"),
        ("verify_hrs_min_ohms", math.inf, "expected a finite number in (0.0, inf)"),
        ("verify_voltage", 0.5, "expected a finite number in (0.0, 0.3]"),
        ("stuck_lrs_rate", 1.0, "expected a finite number in [0.0, 1.0)"),
        ("stuck_hrs_rate", -0.1, "expected a finite number in [0.0, 1.0)"),
        ("program_pulse_energy", -1e-12, "expected a finite number in [0.0, 1e-06]"),
        ("verify_read_time", 2.0, "expected a finite number in [0.0, 1.0]"),
    ],
)
def test_invalid_programming_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"HardwareConfig.{field}=") as error:
        HardwareConfig(**{field: value})
    assert message in str(error.value)


def test_combined_programming_settings_are_checked_and_old_saves_load():
    with pytest.raises(ValueError, match="stuck_lrs_rate \\+ stuck_hrs_rate < 1"):
        HardwareConfig(stuck_lrs_rate=0.5, stuck_hrs_rate=0.5)
    with pytest.raises(ValueError, match="below verify_hrs_min_ohms"):
        HardwareConfig(verify_lrs_max_ohms=5e4, verify_hrs_min_ohms=4e4)
    assert CONFIG_VERSION >= 2
    new_fields = (
        "initial_cycle_mode",
        "write_verify",
        "verify_max_attempts",
        "verify_lrs_max_ohms",
        "verify_hrs_min_ohms",
        "verify_voltage",
        "stuck_lrs_rate",
        "stuck_hrs_rate",
        "program_pulse_energy",
        "program_pulse_time",
        "verify_read_energy",
        "verify_read_time",
    )
    saved = {k: v for k, v in HardwareConfig().to_dict().items() if k not in new_fields}
    assert HardwareConfig.from_saved(saved, version=1) == HardwareConfig()
