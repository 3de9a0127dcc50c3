"""Stable seeds derived from a global seed and names (independent of Python's hash salt)."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the ``repr`` of ``parts`` via SHA-256: equal on every process and rank.

    Example: ``stable_seed(0, "encoder.layers.0.ffn.w1")`` seeds that layer's chip.
    """
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
