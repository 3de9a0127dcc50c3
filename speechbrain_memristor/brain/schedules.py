"""Learning-rate schedule of the recipes: Noam from scratch, a gentler Noam for fine-tuning.

A stage started from a trained model (``init_from``: QAT or hardware-aware fine-tuning of the
float baseline) should not climb back to the from-scratch peak: the demo's QAT restarted the
warm-up to 2e-3 and its dev WER rose from 38 to 49 within 4 epochs. `noam_schedule` gives such
a stage a short warm-up to a lower peak (``finetune_lr`` after ``finetune_warmup_steps``),
then the same inverse-square-root decay; a run from scratch keeps the recipe's Noam schedule
unchanged.
"""

from __future__ import annotations

import os

from speechbrain.nnet.schedulers import NoamScheduler


def noam_schedule(
    lr: float,
    warmup_steps: int,
    init_from: str | os.PathLike | None = None,
    finetune_lr: float | None = None,
    finetune_warmup_steps: int | None = None,
) -> NoamScheduler:
    """NoamScheduler(lr, warmup_steps); with ``init_from`` set, the fine-tuning values (each
    None: keep the from-scratch one). Peak lr is reached after the warm-up steps."""
    for field, value in (("finetune_lr", finetune_lr), ("lr", lr)):
        if value is not None and not value > 0:
            raise ValueError(f"{field}={value!r} is invalid: expected a learning rate > 0.")
    if init_from is not None:
        lr = lr if finetune_lr is None else finetune_lr
        warmup_steps = warmup_steps if finetune_warmup_steps is None else finetune_warmup_steps
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(
            f"warmup_steps={warmup_steps!r} (or finetune_warmup_steps) is invalid: expected an "
            "integer >= 1."
        )
    return NoamScheduler(lr_initial=lr, n_warmup_steps=warmup_steps)
