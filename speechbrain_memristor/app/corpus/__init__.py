"""Synthetic TED-LIUM 2 style demo corpus (``speechbrain-memristor make-corpus``).

Modules: ``espeak`` (eSpeak NG binding, optional ``demo`` extra), ``text`` (sentences),
``speakers`` (synthetic voices), ``layout`` (``make_corpus``: audio and STM files).
"""
