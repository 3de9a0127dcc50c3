"""Stable seeds derived from names (independent of Python's hash salt, equal on every rank)."""

from __future__ import annotations

import hashlib


def seed_from_text(text: str, bits: int = 63) -> int:
    """The low ``bits`` bits (at most 64) of the SHA-256 digest of ``text``, little-endian."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**bits - 1)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the ``repr`` of ``parts``: equal on every process and rank.

    Example: ``stable_seed(0, "encoder.layers.0.ffn.w1")`` seeds that layer's chip.
    """
    return seed_from_text(repr(parts))
