"""A tiny policy for TRL tests, built locally: a character tokenizer and a 2-layer Qwen2 (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig

CHARS = list("0123456789+=?ab ")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built locally (no hub access), padding on the left."""
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.padding_side = "left"
    return fast


def tiny_model(tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A Qwen2ForCausalLM with 2 layers and hidden size 32, random weights (seeded)."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config)


def rows(n: int) -> list[dict[str, str]]:
    """``n`` prompts ``a+b=`` with task keys ``sum-<i>``."""
    return [{"prompt": f"{i % 10}+{i // 10 % 10}=", "task_key": f"sum-{i}"} for i in range(n)]


def contains_digit(completions: list[str], **kwargs: object) -> list[float]:
    """Binary reward: 1 when the completion contains the digit ``1`` (a coin flip for a random model)."""
    return [1.0 if "1" in c else 0.0 for c in completions]


def grpo_args(out: Path, steps: int, **overrides: Any) -> GRPOConfig:
    """GRPOConfig for CPU tests; TRL's own batch layout unless ``overrides`` change it."""
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "max_completion_length": 6,
        "max_steps": steps,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "beta": 0.0,
        "temperature": 1.0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return GRPOConfig(**settings)
