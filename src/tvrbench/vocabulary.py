"""The tiny tokenizer's vocabulary, frozen (SPEC §1: a tokenizer the project builds offline).

The words are those of the synthetic DiDeMo-format generator (``tvrbench.data.synth``), written
out here rather than derived from it, for two reasons: the backbone must not import the data
package, and token ids must never move — cached pretrained tiny CLIPs and committed results
depend on the exact order. ``tests/test_backbone.py`` checks that the generator's words are
exactly these, so a change to the generator's sentences cannot go unnoticed.

Token ids of the tiny tokenizer: ``<|pad|> 0, <|unk|> 1, <|startoftext|> 2, <|endoftext|> 3``,
then :data:`PUNCTUATION` (4-9), then :data:`TINY_WORDS` in this (sorted) order (10-50).
"""

from __future__ import annotations

#: Every word a synthetic sentence can contain: lower-case, sorted, no punctuation.
TINY_WORDS: tuple[str, ...] = (
    "a",
    "across",
    "an",
    "appears",
    "background",
    "bar",
    "black",
    "blue",
    "circle",
    "cross",
    "crosses",
    "cyan",
    "down",
    "drifts",
    "green",
    "grey",
    "in",
    "large",
    "leaves",
    "left",
    "moves",
    "on",
    "orange",
    "pink",
    "purple",
    "red",
    "right",
    "ring",
    "screen",
    "see",
    "slides",
    "small",
    "square",
    "the",
    "to",
    "trail",
    "triangle",
    "up",
    "we",
    "white",
    "yellow",
)

#: Punctuation tokens, in id order (split off by the tokenizer's pre-tokenizer).
PUNCTUATION: tuple[str, ...] = (".", ",", "!", "?", "'", "-")

__all__ = ["PUNCTUATION", "TINY_WORDS"]
