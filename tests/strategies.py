"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

FILE_CHAR = st.characters(codec="utf-8")
"""What a file read as UTF-8 can hold: any character but a lone surrogate."""
ANY_CHAR = st.characters()
"""What a JSON string can hold: lone surrogates too."""
HUGE = "9" * 4400
"""More digits than int() converts by default (4,300)."""


def spliced(tokens: list[str], max_size: int = 40) -> st.SearchStrategy[str]:
    """Text made of tokens that matter to a parser, mixed with any other characters.

    Near-valid input like this reaches far deeper into a parser than random text.
    """
    return st.lists(st.one_of(st.sampled_from(tokens), FILE_CHAR),
                    max_size=max_size).map("".join)
