#!/usr/bin/env python3
"""Conformer CTC on TED-LIUM release 2, executed digitally, fake-quantized or on simulated
memristor crossbars.

The hparams key ``execution`` selects the mode (``digital`` | ``fake_quant`` | ``analog``);
the hardware settings live under ``hardware``. Training in ``fake_quant`` is quantization-aware
training; evaluation in ``analog`` programs ``num_chips`` chips and writes a WER table.

Examples::

    python train.py hparams/conformer_ctc.yaml --data_folder=/data/TEDLIUM_release2
    python train.py hparams/conformer_ctc.yaml --data_folder=... --execution=analog \
        --weight_bits=3 --test_only
    torchrun --nproc_per_node=4 train.py hparams/conformer_ctc.yaml --data_folder=...
"""

import logging
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.tokenizers.SentencePiece import SentencePiece
from speechbrain.utils.distributed import if_main_process, run_on_main

from speechbrain_memristor.brain import MemristorBrain

logger = logging.getLogger(__name__)

RECIPE_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(RECIPE_ROOT))
from tedlium2_prepare import prepare_tedlium2  # noqa: E402


class ASR(MemristorBrain):
    """CTC acoustic model: Fbank -> CNN frontend -> Conformer encoder -> linear -> CTC."""

    def compute_forward(self, batch, stage):
        """Log-probabilities [batch, frames, vocabulary] and relative lengths [batch]."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens)
        if stage == sb.Stage.TRAIN and hasattr(self.hparams, "fea_augment"):
            feats, _ = self.hparams.fea_augment(feats, wav_lens)
        src = self.modules.CNN(feats)
        encoded = self.modules.encoder(src, wav_lens)
        logits = self.modules.ctc_lin(encoded)
        return self.hparams.log_softmax(logits), wav_lens

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; on dev/test also greedy decoding into the WER and CER trackers."""
        log_probs, wav_lens = predictions
        tokens, token_lens = batch.tokens
        loss = self.hparams.ctc_cost(log_probs, tokens, wav_lens, token_lens)
        if stage != sb.Stage.TRAIN:
            hypotheses = sb.decoders.ctc_greedy_decode(
                log_probs, wav_lens, blank_id=self.hparams.blank_index
            )
            predicted = [self.decode_words(ids) for ids in hypotheses]
            targets = [words.split() for words in batch.wrd]
            self.wer_metric.append(batch.id, predicted, targets)
            self.cer_metric.append(batch.id, predicted, targets)
        return loss

    def decode_words(self, ids: list[int]) -> list[str]:
        """Words of one greedy CTC hypothesis. A small corpus can give the tokenizer fewer
        pieces than `output_neurons`; ids past its vocabulary are never targets and are dropped."""
        vocabulary = self.tokenizer.sp.get_piece_size()
        return self.tokenizer.sp.decode_ids([i for i in ids if i < vocabulary]).split()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Advance the Noam learning-rate schedule after each optimizer step."""
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Fresh error-rate trackers for dev and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log statistics, keep the best checkpoint by dev WER, write test WER details."""
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats["WER"] = self.wer_metric.summarize("error_rate")
        stats["CER"] = self.cer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"]}, min_keys=["WER"], num_to_keep=2
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            if if_main_process():
                with open(self.hparams.wer_file, "w", encoding="utf-8") as wer_file:
                    self.wer_metric.write_stats(wer_file)


def dataio_prepare(hparams, tokenizer):
    """Train, dev and test datasets reading audio and encoding words into token ids."""
    datasets = {}
    for split, csv_key in (("train", "train_csv"), ("dev", "valid_csv"), ("test", "test_csv")):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=hparams[csv_key])
        datasets[split] = dataset.filtered_sorted(sort_key="duration")
    if hparams["sorting"] == "descending":
        datasets["train"] = datasets["train"].filtered_sorted(sort_key="duration", reverse=True)
    elif hparams["sorting"] == "random":
        datasets["train"] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=hparams["train_csv"]
        )
    all_sets = list(datasets.values())

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(words):
        yield words
        yield torch.LongTensor(tokenizer.sp.encode_as_ids(words))

    sb.dataio.dataset.add_dynamic_item(all_sets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(all_sets, text_pipeline)
    sb.dataio.dataset.set_output_keys(all_sets, ["id", "sig", "wrd", "tokens"])
    return datasets


def train_tokenizer(hparams):
    """SentencePiece model over the training transcripts; blank/unk shares index 0 with CTC."""
    return SentencePiece(
        model_dir=hparams["tokenizer_folder"],
        vocab_size=hparams["output_neurons"],
        annotation_train=hparams["train_csv"],
        annotation_read="wrd",
        model_type=hparams["token_type"],
        character_coverage=1.0,
    )


def initialize_from(hparams):
    """Start from the best (lowest dev WER) model and normalizer of another run's save folder,
    e.g. QAT fine-tuning from the float baseline. Skipped when this run has checkpoints."""
    if hparams["init_from"] is None or hparams["checkpointer"].find_checkpoint() is not None:
        return
    source = sb.utils.checkpoints.Checkpointer(
        hparams["init_from"],
        recoverables={"model": hparams["model"], "normalizer": hparams["normalize"]},
    )
    checkpoint = source.find_checkpoint(min_key="WER")
    if checkpoint is None:
        raise FileNotFoundError(
            f"init_from={hparams['init_from']!r} holds no checkpoint with a dev WER; give the "
            "save folder of a finished run (e.g. results/.../save) or set init_from: null."
        )
    logger.info("Initializing from %s", checkpoint.path)
    source.load_checkpoint(checkpoint)


def main(argv):
    """Prepare data and tokenizer, then train (unless --test_only) and evaluate dev and test."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_on_main(
        prepare_tedlium2,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prepared_folder"],
            "min_duration": hparams["min_duration"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    run_on_main(train_tokenizer, kwargs={"hparams": hparams})
    tokenizer = train_tokenizer(hparams)
    if tokenizer.sp.get_piece_size() > hparams["output_neurons"]:
        raise ValueError(
            f"output_neurons={hparams['output_neurons']} is smaller than the tokenizer's "
            f"{tokenizer.sp.get_piece_size()} pieces in {hparams['tokenizer_folder']}; raise "
            "output_neurons or delete that folder to train a smaller tokenizer."
        )
    datasets = dataio_prepare(hparams, tokenizer)

    asr_brain = ASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.tokenizer = tokenizer

    if not run_opts.get("test_only", False):
        initialize_from(hparams)
        asr_brain.fit(
            asr_brain.hparams.epoch_counter,
            datasets["train"],
            datasets["dev"],
            train_loader_kwargs=hparams["train_dataloader_opts"],
            valid_loader_kwargs=hparams["valid_dataloader_opts"],
        )

    unknown = [split for split in hparams["test_splits"] if split not in datasets]
    if unknown:
        raise ValueError(
            f"test_splits={hparams['test_splits']!r}: unknown {unknown}; use dev, test."
        )
    for split in hparams["test_splits"]:
        asr_brain.hparams.wer_file = os.path.join(hparams["output_folder"], f"wer_{split}.txt")
        asr_brain.evaluate(
            datasets[split],
            min_key="WER",
            test_loader_kwargs=hparams["test_dataloader_opts"],
            table_name=split,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
