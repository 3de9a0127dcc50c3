"""SpeechBrain glue: the hook used from hparams, the Brain, and the result-table schema.

CONTRACT paths: ``speechbrain_memristor.brain.MemristorHook`` and
``speechbrain_memristor.brain.MemristorBrain`` (used by hparams files in the wild).
"""

from speechbrain_memristor.brain.hook import MemristorHook, find_hook
from speechbrain_memristor.brain.memristor_brain import MemristorBrain
from speechbrain_memristor.brain.results import EvaluationRun, EvaluationTable

__all__ = ["EvaluationRun", "EvaluationTable", "MemristorBrain", "MemristorHook", "find_hook"]
