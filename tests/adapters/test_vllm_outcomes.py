"""vLLM results -> outcomes -> a real server.

vLLM cannot be installed on these CPU machines, so the conversion is tested
on every run with small classes carrying the two attributes it reads
(``RequestOutput.outputs``, ``CompletionOutput.text``); the last test repeats
it with vLLM's own output classes where vLLM is importable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from bots_adapters.vllm import outcomes_from_outputs, rollout_rewards
from bots_client import Outcome, SelectionState, SelectorClient


@dataclasses.dataclass
class Completion:
    index: int
    text: str


@dataclasses.dataclass
class Request:
    request_id: str
    prompt: str
    outputs: list[Completion]


def generate(prompts: dict[str, str], answers: dict[str, list[str]]) -> list[Request]:
    return [
        Request(str(i), prompts[k], [Completion(j, t) for j, t in enumerate(answers[k])])
        for i, k in enumerate(prompts)
    ]


PROMPTS = {"add-1": "2+2=", "add-2": "3+5=", "add-3": "9+9="}
TRUTH = {"add-1": "4", "add-2": "8", "add-3": "18"}


def exact(key: str, text: str) -> float:
    return float(text.strip() == TRUTH[key])


def test_n_samples_per_prompt_become_successes_out_of_n() -> None:
    outputs = generate(
        PROMPTS, {"add-1": ["4", "4", "5", "4"], "add-2": ["7", "6", "9", "0"], "add-3": ["18"] * 4}
    )
    out = outcomes_from_outputs(outputs, list(PROMPTS), exact)
    assert out == [Outcome("add-1", 3, 4), Outcome("add-2", 0, 4), Outcome("add-3", 4, 4)]


def test_a_reward_function_can_see_the_output_objects_and_skip_samples() -> None:
    outputs = generate({"add-1": "2+2="}, {"add-1": ["4", "", "4"]})
    seen: list[tuple[str, Any]] = []

    def graded(key: str, text: str, completion: Completion, request: Request) -> float | None:
        seen.append((request.prompt, completion.index))
        return None if not text else 0.75

    keys, _rewards = rollout_rewards(outputs, ["add-1"], graded)
    assert keys == ["add-1"] * 3 and seen == [("2+2=", 0), ("2+2=", 1), ("2+2=", 2)]
    (o,) = outcomes_from_outputs(outputs, ["add-1"], graded, mode="fraction")
    assert o == Outcome("add-1", 1.5, 2)


def test_repeated_prompts_add_up_and_lengths_must_match() -> None:
    outputs = generate({"a": "x", "b": "y"}, {"a": ["4"], "b": ["4"]})
    assert outcomes_from_outputs(outputs, ["add-1", "add-1"], exact) == [Outcome("add-1", 2, 2)]
    with pytest.raises(ValueError, match="2 request outputs but 1 task keys"):
        rollout_rewards(outputs, ["add-1"], exact)


def test_outcomes_close_the_selection_on_a_real_server(client: SelectorClient) -> None:
    client.create_pool("v", list(PROMPTS), preset="bots")
    sel = client.select_batch("v", 3, run_id="vllm", step=0, expected_trials=2)
    answers = {k: [TRUTH[k], "wrong"] for k in sel.keys}
    outputs = generate({k: PROMPTS[k] for k in sel.keys}, answers)
    result = client.report_outcomes(
        "v", outcomes_from_outputs(outputs, list(sel.keys), exact), selection_id=sel.selection_id
    )
    assert result.selection_state is SelectionState.APPLIED
    assert client.get_pool("v").last_effective_task_ratio == 1.0


def test_with_vllm_output_classes() -> None:
    outputs_mod = pytest.importorskip("vllm.outputs")
    completions = [
        outputs_mod.CompletionOutput(
            index=j, text=t, token_ids=[1], cumulative_logprob=None, logprobs=None
        )
        for j, t in enumerate(["4", "5"])
    ]
    request = outputs_mod.RequestOutput(
        request_id="0",
        prompt="2+2=",
        prompt_token_ids=[1],
        prompt_logprobs=None,
        outputs=completions,
        finished=True,
    )
    assert outcomes_from_outputs([request], ["add-1"], exact) == [Outcome("add-1", 1, 2)]
