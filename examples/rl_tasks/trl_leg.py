"""The same world through the real TRL path: `BotsGRPOTrainer` on the base policy, one seed, a short run."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import policy
import torch
import world
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, TrainerCallback


def char_tokenizer() -> PreTrainedTokenizerFast:
    """The world's character vocabulary as a Hugging Face tokenizer (same ids as policy.encode_prompts)."""
    tok = Tokenizer(models.WordLevel(vocab=dict(world.VOCAB), unk_token=world.PAD))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=world.PAD, eos_token=world.EOS)
    fast.padding_side = "left"
    return fast


class _Log(TrainerCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs and "frac_reward_zero_std" in logs:
            self.rows.append({"step": state.global_step, **logs})


def run_trl(
    cfg: Any, prep: dict[str, Any], base_path: Path, address: str, steps: int, out: Path
) -> dict[str, Any]:
    """Trains the base policy for ``steps`` GRPO steps with TRL, selecting through a `bots` pool."""
    warnings.filterwarnings("ignore")
    from bots_adapters.trl import BotsGRPOTrainer
    from bots_client import PoolConfig, SelectorClient, Task
    from datasets import Dataset
    from trl import GRPOConfig

    tokenizer = char_tokenizer()
    assert (
        tokenizer(prep["pool"][0].prompt)["input_ids"]
        == policy.encode_prompts([prep["pool"][0].prompt])[0].tolist()
    )
    model = policy.build_model(seed=0)
    model.load_state_dict(torch.load(base_path))
    pool, held = prep["pool"], policy.Encoded(prep["held"])
    rows = [{"prompt": p.prompt, "task_key": p.key, "answer": p.answer} for p in pool]

    def exact_match(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
        return [float(c.replace(" ", "") == a) for c, a in zip(completions, answer)]

    before = float(policy.pass_rates(model, held, cfg.eval_samples, seed=10_000).mean())
    name = "rl-trl-bots-s0"
    log = _Log()
    t0 = time.monotonic()
    with SelectorClient(address) as client:
        w, g = prep["rates"]["weak"], prep["rates"]["strong"]
        client.create_pool(
            name,
            [Task(p.key, weak=float(a), strong=float(b)) for p, a, b in zip(pool, w, g)],
            preset="bots",
            config=PoolConfig(seed=0, pseudo_rollouts=float(cfg.rollouts)),
        )
        trainer = BotsGRPOTrainer(
            model=model,
            processing_class=tokenizer,
            reward_funcs=[exact_match],
            args=GRPOConfig(
                output_dir=str(out / "trl"),
                max_steps=steps,
                per_device_train_batch_size=cfg.batch_size * cfg.rollouts,
                num_generations=cfg.rollouts,
                max_completion_length=policy.ANSWER_TOKENS,
                learning_rate=cfg.lr,
                lr_scheduler_type="constant",
                beta=0.0,
                temperature=1.0,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                seed=0,
                disable_tqdm=True,
                dataloader_num_workers=0,
            ),
            train_dataset=Dataset.from_list(rows),
            bots_client=client,
            bots_pool=name,
            run_id=f"{name}-run",
            reward_mode="binary",
            callbacks=[log],
        )
        trainer.train()
        trainer.close_bots()
        info = client.get_pool(name)
    after = float(policy.pass_rates(model, held, cfg.eval_samples, seed=10_000 + steps).mean())
    etr = [1.0 - r["frac_reward_zero_std"] for r in log.rows]
    return {
        "steps": steps,
        "seconds": time.monotonic() - t0,
        "steps_applied": info.steps_applied,
        "pass1_before": before,
        "pass1_after": after,
        "etr_trl": etr,
        "etr_mean": float(np.mean(etr)) if etr else float("nan"),
        "etr_service_rolling": info.rolling_effective_task_ratio,
        "reward_mean": [r.get("reward", float("nan")) for r in log.rows],
    }
