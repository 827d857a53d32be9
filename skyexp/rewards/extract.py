"""Final-answer extraction from model text. Linear time, no evaluation of model text."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_INT = re.compile(r"[+-]?\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces; None if there is none
    or its braces never close."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # unbalanced: try an earlier box
    return None


def normalise(ans: str) -> str:
    """Cheap canonical form for the exact-match fast path: no spaces, no surrounding $ or braces."""
    s = ans.strip().strip("$").replace(" ", "")
    while s.startswith("{") and s.endswith("}") and len(s) > 2:
        s = s[1:-1]
    return s


def fast_verdict(pred: str, gold: str) -> float | None:
    """1.0 / 0.0 when the answer is decidable without a symbolic check (identical text, or both
    plain integers), else None. Agrees with math-verify on these cases; it only saves a round
    trip to the scoring pool."""
    p, g = normalise(pred), normalise(gold)
    if p == g:
        return 1.0
    if _INT.fullmatch(p) and _INT.fullmatch(g):
        return float(int(p) == int(g))
    return None


def answer_text(value: object) -> str | None:
    """A gold answer as stored in data files -> one string, or None when unusable.

    Lists give their first entry (OlympiadBench's `final_answer`), integral floats their integer
    text (AMC answers stored as 27.0), strings lose surrounding whitespace and `$...$`."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    s = value.strip()
    if len(s) > 1 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    return s or None
