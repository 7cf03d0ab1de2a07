"""The policy: a 2-layer Qwen2 causal LM built from a config (random init), sampled token by token.

Also the procedures around it: supervised warm-up, measured pass rates,
held-out sampled pass@1 and greedy accuracy, and one GRPO update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import world
from transformers import Qwen2Config, Qwen2ForCausalLM

ANSWER_TOKENS = world.MAX_ANSWER + 1  # the answer and its EOS


def build_model(seed: int = 0) -> Qwen2ForCausalLM:
    """A tiny Qwen2ForCausalLM (about 0.1M parameters) with seeded random weights."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(world.VOCAB),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=world.VOCAB[world.PAD],
        eos_token_id=world.VOCAB[world.EOS],
        bos_token_id=world.VOCAB[world.EOS],
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config)


def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
    """(N, PROMPT_WIDTH) token ids."""
    return torch.tensor([[world.VOCAB[c] for c in p] for p in prompts], dtype=torch.long)


def encode_answers(answers: Sequence[str]) -> torch.Tensor:
    """(N, ANSWER_TOKENS): the answer, EOS, then PAD: what a correct rollout looks like."""
    out = torch.full((len(answers), ANSWER_TOKENS), world.VOCAB[world.PAD], dtype=torch.long)
    for i, a in enumerate(answers):
        out[i, : len(a)] = torch.tensor([world.VOCAB[c] for c in a])
        out[i, len(a)] = world.VOCAB[world.EOS]
    return out


class Encoded:
    """A list of problems as tensors: prompts (N, W) and target answers (N, A)."""

    def __init__(self, problems: Sequence[world.Problem]) -> None:
        self.problems = list(problems)
        self.prompts = encode_prompts([p.prompt for p in problems])
        self.targets = encode_answers([p.answer for p in problems])

    def __len__(self) -> int:
        return len(self.problems)


@torch.no_grad()
def generate(
    model: Qwen2ForCausalLM, prompts: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    """Samples (``gen`` given, temperature 1) or decodes greedily; returns (N, ANSWER_TOKENS), PAD after EOS."""
    eos, pad = world.VOCAB[world.EOS], world.VOCAB[world.PAD]
    out = model(input_ids=prompts, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    tokens = []
    for t in range(ANSWER_TOKENS):
        if gen is None:
            tok = logits.argmax(-1)
        else:
            tok = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen)[:, 0]
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        tokens.append(tok)
        done |= tok == eos
        if bool(done.all()) or t == ANSWER_TOKENS - 1:
            break
        out = model(input_ids=tok[:, None], past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    seq = torch.stack(tokens, 1)
    if seq.shape[1] < ANSWER_TOKENS:
        seq = torch.cat([seq, seq.new_full((len(seq), ANSWER_TOKENS - seq.shape[1]), pad)], 1)
    return seq


def rewards(seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where the rollout is exactly the answer followed by EOS, else 0.0."""
    return (seq == targets).all(-1).float()


def answer_logprobs(
    model: Qwen2ForCausalLM, prompts: torch.Tensor, answers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (N, A) of ``answers`` after ``prompts`` and the mask of tokens up to EOS."""
    ids = torch.cat([prompts, answers], 1)
    logits = model(input_ids=ids).logits[:, prompts.shape[1] - 1 : -1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    pad = world.VOCAB[world.PAD]
    mask = answers != pad
    return logp, mask


def sft(
    model: Qwen2ForCausalLM,
    steps: int,
    seed: int,
    checkpoints: Sequence[int] = (),
    lr: float = 2e-3,
    batch: int = 128,
) -> dict[int, dict[str, torch.Tensor]]:
    """Supervised warm-up on fresh random problems; returns state dicts at ``checkpoints``."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # Linear warm-up, then cosine decay to a tenth over the whole run.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 50) * (0.55 + 0.45 * math.cos(math.pi * s / steps)),
    )
    saved: dict[int, dict[str, torch.Tensor]] = {}
    model.train()
    for step in range(1, steps + 1):
        pairs = world.sft_batch(batch, rng)
        p = encode_prompts([q for q, _ in pairs])
        a = encode_answers([a for _, a in pairs])
        logp, mask = answer_logprobs(model, p, a)
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step in checkpoints:
            saved[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return saved


@torch.no_grad()
def pass_rates(model: Qwen2ForCausalLM, data: Encoded, samples: int, seed: int) -> np.ndarray:
    """Each problem's pass rate over ``samples`` sampled answers (how a user measures a reference)."""
    gen = torch.Generator().manual_seed(seed)
    hits = torch.zeros(len(data))
    chunk = 2048
    for lo in range(0, len(data), chunk):
        p, t = data.prompts[lo : lo + chunk], data.targets[lo : lo + chunk]
        rep = p.repeat_interleave(samples, 0)
        r = rewards(generate(model, rep, gen), t.repeat_interleave(samples, 0))
        hits[lo : lo + chunk] = r.view(-1, samples).sum(1)
    return (hits / samples).numpy()


@torch.no_grad()
def greedy_accuracy(model: Qwen2ForCausalLM, data: Encoded) -> np.ndarray:
    """Per-problem 0/1: is the greedy answer correct."""
    return rewards(generate(model, data.prompts, None), data.targets).numpy()


def grpo_step(
    model: Qwen2ForCausalLM,
    opt: torch.optim.Optimizer,
    prompts: torch.Tensor,
    seqs: torch.Tensor,
    r: torch.Tensor,
    groups: int,
) -> None:
    """One on-policy GRPO update (no KL, one gradient step, so the PPO ratio is 1).

    ``seqs`` and ``r`` hold ``groups`` groups of rollouts, group-major.
    Advantages are group-normalised; the loss is averaged over all answer
    tokens of the batch (DAPO's token-level normalisation), so groups whose
    rewards all agree add nothing but still count in the denominator.
    """
    rg = r.view(groups, -1)
    adv = ((rg - rg.mean(1, keepdim=True)) / (rg.std(1, keepdim=True) + 1e-4)).flatten()
    logp, mask = answer_logprobs(model, prompts, seqs)
    loss = -(adv[:, None] * logp * mask).sum() / mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
