"""A real TRL GRPOTrainer on CPU selects its prompts through BOTS and reports outcomes to a real server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bots_adapters.trl import BotsGRPOTrainer, BotsRepeatSampler
from bots_client import SelectionState, SelectorClient
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig

pytestmark = [
    # TRL marks parts of its API experimental and transformers warns about CPU-only
    # settings; neither is ours to fix.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

CHARS = list("0123456789+=?ab ")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built locally (no hub access)."""
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.padding_side = "left"
    return fast


def tiny_model(tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
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
    return [{"prompt": f"{i % 10}+{i // 10 % 10}=", "task_key": f"sum-{i}"} for i in range(n)]


def contains_digit(completions: list[str], **kwargs: object) -> list[float]:
    """Binary reward: 1 when the completion contains the digit ``1`` (a coin flip for a random model)."""
    return [1.0 if "1" in c else 0.0 for c in completions]


def grpo_args(out: Path, steps: int) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        beta=0.0,
        temperature=1.0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


@pytest.mark.timeout(300)
def test_grpo_trainer_trains_on_bots_selections_and_reports_every_rollout(
    client: SelectorClient, tmp_path: Path
) -> None:
    data = rows(40)
    client.create_pool("trl", [r["task_key"] for r in data], preset="bots")
    tokenizer = char_tokenizer()
    trainer = BotsGRPOTrainer(
        model=tiny_model(tokenizer),
        reward_funcs=[contains_digit],
        args=grpo_args(tmp_path / "out", steps=3),
        train_dataset=Dataset.from_list(data),
        processing_class=tokenizer,
        bots_client=client,
        bots_pool="trl",
        run_id="trl-test",
    )
    trainer.train()
    trainer.close_bots()

    # The sampler override is in place, shaped like TRL's RepeatSampler.
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, BotsRepeatSampler)
    assert sampler.mini_repeat_count == 4

    # 3 optimizer steps with one generation each: 3 selections of 2 prompts x 4 completions.
    # The server rejects a task that is not part of the selection, so delivery without
    # failures means the trainer generated for exactly the prompts BOTS selected, and
    # APPLIED means every selected task got its 4 trials.
    stats = trainer.bots_reporter.stats
    assert trainer.bots_reward.reported == 3
    assert stats.delivered == 3 and stats.failed == 0 and stats.late == 0
    delivered = trainer.bots_reporter.delivered
    assert [d.result.selection_state for d in delivered if d.result] == [SelectionState.APPLIED] * 3
    for d in delivered:
        assert [o.trials for o in d.outcomes] == [4.0, 4.0]
        assert all(0 <= o.successes <= 4 for o in d.outcomes)
    assert len({d.selection_id for d in delivered}) == 3
    info = client.get_pool("trl")
    assert info.steps_applied == 3
    assert info.selections_opened >= 3  # the loader may draw one batch ahead


@pytest.mark.timeout(300)
def test_two_ranks_get_the_same_prompts_and_their_shares_add_up(
    client: SelectorClient, tmp_path: Path
) -> None:
    """Two samplers of one run (two ranks) draw identical chunks; each rank reports half the rollouts."""
    keys = [f"k{i}" for i in range(30)]
    client.create_pool("ranks", keys, preset="bots")
    ranks = [
        BotsRepeatSampler(
            client,
            "ranks",
            keys,
            mini_repeat_count=4,
            batch_size=3,
            repeat_count=2,
            run_id="r",
            steps_per_epoch=2,
        )
        for _ in range(2)
    ]
    streams = [list(s) for s in ranks]
    assert streams[0] == streams[1]
    assert len(streams[0]) == len(ranks[0]) == 2 * 3 * 4 * 2
    first = ranks[0].ledger.pending()[0][1]
    # Each task's 4 rollouts split 2 + 2 over the ranks; the step closes with the second share.
    for rank in range(2):
        result = client.report_outcomes(
            "ranks",
            [(k, 1, 2) for k in first.keys],
            selection_id=first.selection_id,
            request_id=f"r-s0-rank{rank}",
        )
        expected = SelectionState.OPEN if rank == 0 else SelectionState.APPLIED
        assert result.selection_state is expected
