"""The task world: six families of string tasks at several lengths, a character vocabulary, exact-match reward.

Each task is a prompt such as ``"....1234+5678="`` (left-filled with ``.`` to a
fixed width, so a batch of prompts needs no padding) and one correct answer
string. Sums and products are answered least significant digit first
(``"2196"`` for 1234+5678), which lets a 2-layer model learn carrying. Families exercise partly independent skills; within a family the
level (number length) sets the difficulty.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FILL, PAD, EOS = ".", "<pad>", "<eos>"
CHARS = list("0123456789+*%=RSCM:.")
VOCAB = {PAD: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
PROMPT_WIDTH = 14
MAX_ANSWER = 8  # characters; generation allows one more token for EOS

# family -> levels. Level = digits of the operands (add, mul, mod) or string length.
FAMILIES: dict[str, tuple[int, ...]] = {
    "add": (1, 2, 3, 4, 5),
    "mul": (1, 2, 3, 4),
    "rev": (3, 4, 5, 6, 7, 8),
    "sort": (3, 4, 5, 6, 7, 8),
    "count": (4, 6, 8, 10),
    "mod": (2, 3, 4, 5),
}
GROUPS: tuple[tuple[str, int], ...] = tuple((f, lv) for f, lvs in FAMILIES.items() for lv in lvs)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task: its key, family, level, prompt (fixed width) and answer."""

    key: str
    family: str
    level: int
    prompt: str
    answer: str

    @property
    def group(self) -> str:
        """``family-level``, e.g. ``add-3``."""
        return f"{self.family}-{self.level}"


def _digits(rng: np.random.Generator, n: int, lead_nonzero: bool = True) -> str:
    s = "".join(str(int(d)) for d in rng.integers(0, 10, n))
    if lead_nonzero and n > 1 and s[0] == "0":
        s = str(int(rng.integers(1, 10))) + s[1:]
    return s


def make_one(family: str, level: int, rng: np.random.Generator) -> tuple[str, str]:
    """A random (question, answer) of ``family`` at ``level``, question without fill."""
    if family == "add":
        a, b = _digits(rng, level), _digits(rng, level)
        return f"{a}+{b}=", str(int(a) + int(b))[::-1]
    if family == "mul":
        a, b = _digits(rng, level), str(int(rng.integers(2, 10)))
        return f"{a}*{b}=", str(int(a) * int(b))[::-1]
    if family == "rev":
        s = _digits(rng, level, lead_nonzero=False)
        return f"R{s}=", s[::-1]
    if family == "sort":
        s = _digits(rng, level, lead_nonzero=False)
        return f"S{s}=", "".join(sorted(s))
    if family == "count":
        d = str(int(rng.integers(0, 10)))
        s = _digits(rng, level, lead_nonzero=False)
        return f"C{d}:{s}=", str(s.count(d))
    if family == "mod":
        a, m = _digits(rng, level), int(rng.integers(3, 10))
        return f"{a}%{m}=", str(int(a) % m)
    raise ValueError(f"unknown family {family!r}")


def fill(question: str) -> str:
    """Left-fills a question to the fixed prompt width."""
    if len(question) > PROMPT_WIDTH:
        raise ValueError(f"question {question!r} is longer than {PROMPT_WIDTH}")
    return FILL * (PROMPT_WIDTH - len(question)) + question


def make_problems(
    per_group: int, seed: int, prefix: str, exclude: set[str] | None = None
) -> list[Problem]:
    """``per_group`` distinct problems of every (family, level), none of whose prompts is in ``exclude``."""
    rng = np.random.default_rng(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    for family, level in GROUPS:
        made, tries = 0, 0
        while made < per_group and tries < 50 * per_group:
            tries += 1
            q, a = make_one(family, level, rng)
            p = fill(q)
            if p in seen:
                continue
            seen.add(p)
            out.append(Problem(f"{prefix}{family}{level}-{made}", family, level, p, a))
            made += 1
    return out


def sft_batch(size: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``size`` random (prompt, answer) pairs, groups drawn uniformly: the supervised warm-up data."""
    picks = rng.integers(0, len(GROUPS), size)
    return [(fill(q), a) for q, a in (make_one(*GROUPS[int(i)], rng) for i in picks)]
