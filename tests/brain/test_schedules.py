"""The recipes' learning-rate schedule: Noam from scratch, a lower, shorter one to fine-tune."""

import pytest
import torch

from speechbrain_memristor.brain.schedules import noam_schedule


def learning_rates(scheduler, steps):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = []
    for _ in range(steps):
        scheduler(optimizer)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_fine_tuning_warms_up_shortly_to_a_lower_peak_then_decays():
    scratch = learning_rates(noam_schedule(2e-3, 400), 800)
    assert max(scratch) == pytest.approx(2e-3) and scratch.index(max(scratch)) == 399
    tuned = learning_rates(
        noam_schedule(2e-3, 400, init_from="x/save", finetune_lr=5e-4, finetune_warmup_steps=50),
        800,
    )
    assert max(tuned) == pytest.approx(5e-4) and tuned.index(max(tuned)) == 49
    assert tuned[199] == pytest.approx(5e-4 * (50 / 200) ** 0.5)  # inverse-square-root decay
    # Without init_from the fine-tuning values are ignored; None keeps the from-scratch ones.
    ignored = noam_schedule(2e-3, 400, None, finetune_lr=5e-4, finetune_warmup_steps=50)
    assert learning_rates(ignored, 800) == scratch
    assert learning_rates(noam_schedule(2e-3, 400, "x", None, None), 800) == scratch


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"finetune_lr": 0.0}, "finetune_lr=0.0 is invalid"),
        ({"finetune_warmup_steps": 0}, "warmup_steps=0"),
    ],
)
def test_schedule_errors_name_the_field(arguments, message):
    with pytest.raises(ValueError, match=message):
        noam_schedule(1e-3, 10, init_from="x", **arguments)
