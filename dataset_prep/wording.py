"""Counts and articles in messages: "1 step", "2 steps"; "an ImageFolder", "a .beton"."""
from __future__ import annotations


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def with_article(name: str) -> str:
    return f"{'an' if name[:1].upper() in 'AEIOU' else 'a'} {name}"
