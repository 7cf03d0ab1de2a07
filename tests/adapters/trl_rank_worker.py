"""One rank of a two-process BotsGRPOTrainer run (torch.distributed, gloo on CPU); writes rank<r>.json.

Usage: trl_rank_worker.py TARGET POOL OUT_DIR STEPS  (RANK, WORLD_SIZE, MASTER_* in the environment)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")


def main() -> None:
    target, pool, out, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    from bots_adapters.trl import BotsGRPOTrainer
    from bots_client import SelectorClient
    from datasets import Dataset
    from tiny_trl import char_tokenizer, contains_digit, grpo_args, rows, tiny_model

    rank = int(os.environ["RANK"])
    tokenizer = char_tokenizer()
    with SelectorClient(target, timeout=10) as client:
        trainer = BotsGRPOTrainer(
            model=tiny_model(tokenizer),
            reward_funcs=[contains_digit],
            args=grpo_args(out / "run", steps, ddp_backend="gloo"),
            train_dataset=Dataset.from_list(rows(6)),
            processing_class=tokenizer,
            bots_client=client,
            bots_pool=pool,
            run_id="ddp-run",
        )
        assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
        trainer.train()
        trainer.close_bots()
        sampler = trainer.bots_sampler
        assert sampler is not None
        draws = {}
        # The ledger forgets reported selections; the delivered reports name them, and the
        # sampler's last draw (drawn ahead, never trained on) stays pending.
        reports = [
            {
                "selection_id": d.selection_id,
                "state": d.result.selection_state.value if d.result else None,
                "keys": sorted(o.task_key for o in d.outcomes),
                "trials": sum(o.trials for o in d.outcomes),
            }
            for d in trainer.bots_reporter.delivered
        ]
        for step, sel in trainer.bots_ledger.pending():
            draws[str(step)] = [sel.selection_id, list(sel.keys)]
        draws["reported"] = sorted(r["selection_id"] for r in reports)
        result = {
            "rank": rank,
            "global_step": trainer.state.global_step,
            "draws": draws,
            "reports": reports,
            "stats": dataclasses.asdict(trainer.bots_reporter.stats),
        }
        (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
