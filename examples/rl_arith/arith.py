"""The task family (d-digit addition, exact-match reward) and the tiny recurrent policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

PAD, END = 10, 11  # input tokens besides the digits 0..9


@dataclasses.dataclass(frozen=True)
class Problem:
    """``a + b`` with ``digits`` digits each; the answer has ``digits + 1`` digits (leading 0 kept)."""

    key: str
    a: int
    b: int
    digits: int

    @property
    def answer(self) -> int:
        return self.a + self.b


def make_problems(
    count: int, max_digits: int, seed: int, prefix: str, exclude: set[tuple[int, int]] | None = None
) -> list[Problem]:
    """``count`` distinct problems spread evenly over digit counts 1..max_digits."""
    rng = np.random.default_rng(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    for d in range(1, max_digits + 1):
        lo, hi = (0 if d == 1 else 10 ** (d - 1)), 10**d
        # 1-digit sums are few (100): take at most a third of them, the rest from longer ones.
        quota = min(-(-(count - len(out)) // (max_digits - d + 1)), (hi - lo) ** 2 // 3)
        made = 0
        while made < quota:
            a, b = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
            if (a, b) in seen:
                continue
            seen.add((a, b))
            out.append(Problem(f"{prefix}{d}-{a}+{b}", a, b, d))
            made += 1
    return out


def encode(
    problems: list[Problem], max_digits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs (N, L, 2) least significant digit first, targets (N, L) and mask (N, L), L = max_digits + 1."""
    n, width = len(problems), max_digits + 1
    x = np.full((n, width, 2), PAD, dtype=np.int64)
    y = np.zeros((n, width), dtype=np.int64)
    m = np.zeros((n, width), dtype=bool)
    for i, p in enumerate(problems):
        for j in range(p.digits):
            x[i, j, 0] = (p.a // 10**j) % 10
            x[i, j, 1] = (p.b // 10**j) % 10
        x[i, p.digits] = END
        for j in range(p.digits + 1):
            y[i, j] = (p.answer // 10**j) % 10
        m[i, : p.digits + 1] = True
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)


class ColumnPolicy(nn.Module):
    """A GRU reads the digit columns (least significant first) and emits one answer digit per column.

    The answer digits are sampled independently given the GRU states, so a
    rollout's log-probability is the sum over its columns.
    """

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 16)
        self.rnn = nn.GRU(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x).flatten(2)  # (N, L, 32)
        h, _ = self.rnn(e)
        return torch.log_softmax(self.head(h), dim=-1)  # (N, L, 10)


def sample(
    policy: ColumnPolicy, x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples answers; returns (digits (N, L), summed log-probs (N,)) with gradients."""
    logp = policy(x)
    digits = torch.multinomial(logp.detach().exp().flatten(0, 1), 1, generator=gen).view(mask.shape)
    chosen = logp.gather(-1, digits.unsqueeze(-1)).squeeze(-1)
    return digits, (chosen * mask).sum(-1)


def correct(digits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1.0 where every answer digit is right (exact match), else 0.0."""
    return ((digits == y) | ~mask).all(-1).float()


@torch.no_grad()
def pass_rates(
    policy: ColumnPolicy, problems: list[Problem], max_digits: int, samples: int, seed: int
) -> np.ndarray:
    """Each problem's pass rate over ``samples`` sampled answers."""
    x, y, m = encode(problems, max_digits)
    logp = policy(x)
    probs = logp.exp()
    gen = torch.Generator().manual_seed(seed)
    hits = torch.zeros(len(problems))
    for _ in range(samples):
        d = torch.multinomial(probs.flatten(0, 1), 1, generator=gen).view(m.shape)
        hits += correct(d, y, m)
    return (hits / samples).numpy()


@torch.no_grad()
def greedy_accuracy(
    policy: ColumnPolicy, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
) -> float:
    """Exact-match accuracy of the most likely answer."""
    return float(correct(policy(x).argmax(-1), y, m).mean())


def pretrain(
    policy: ColumnPolicy, steps: int, digits: int, max_digits: int, seed: int, lr: float = 3e-3
) -> None:
    """Supervised warm-up on 1..``digits``-digit sums: the "base model" RL starts from."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    for step in range(steps):
        probs = make_problems(64, digits, seed * 100_003 + step, "pre")
        x, y, m = encode(probs, max_digits)
        logp = policy(x)
        nll = -(logp.gather(-1, y.unsqueeze(-1)).squeeze(-1) * m).sum() / m.sum()
        opt.zero_grad()
        nll.backward()
        opt.step()
