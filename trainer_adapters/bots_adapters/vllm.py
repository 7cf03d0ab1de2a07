"""vLLM glue: outcomes from ``LLM.generate`` results.

Imports nothing from vLLM (it reads ``RequestOutput.outputs[i].text``), so it
works in a trainer process that receives vLLM results from a rollout server.
Example::

    outputs = llm.generate(prompts, SamplingParams(n=8, temperature=1.0))
    outcomes = outcomes_from_outputs(outputs, selection.keys, lambda key, text: grade(key, text))
    client.report_outcomes("math", outcomes, selection_id=selection.selection_id)
"""

from __future__ import annotations

from bots_adapters._outcomes import RewardMode
from bots_adapters._vllm_outcomes import outcomes_from_outputs, rollout_rewards

__all__ = ["RewardMode", "outcomes_from_outputs", "rollout_rewards"]
