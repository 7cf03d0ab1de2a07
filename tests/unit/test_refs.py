"""bots_refs without a model: rewards, task and result files, merging, the progress file, the bar."""

from __future__ import annotations

import io
import json
import math
import random
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bots_refs
import pytest
from bots_refs import (
    ProgressFileError,
    RefsError,
    RefTask,
    RewardError,
    RewardSpecError,
    TaskFileError,
    TaskResult,
    derive_seed,
    exact_match,
    last_number,
    load_reward,
    merge_results,
    numeric,
    read_result_file,
    read_task_file,
)
from bots_refs._bar import EtaProgress
from bots_refs._measure import encode_prompt
from bots_refs._progress_file import ProgressFile
from bots_refs._rewards import score
from bots_server._files import read_tasks


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_all_is_sorted_and_importable() -> None:
    assert bots_refs.__all__ == sorted(bots_refs.__all__)
    for name in bots_refs.__all__:
        assert getattr(bots_refs, name) is not None


def test_importing_bots_refs_loads_no_model_framework() -> None:
    import subprocess

    code = (
        "import sys, bots_refs; print(sorted({'torch', 'transformers', 'vllm'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- rewards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 42.", 42.0),
        ("3 apples and 5 pears: 8", 8.0),
        ("total: -1,234.5 units", -1234.5),
        ("so x = 2.5e3", 2500.0),
        ("first \\boxed{17}, then I doubt: 18", 17.0),
        ("4, 5,6", 6.0),
        ("no number here", None),
        ("", None),
    ],
)
def test_last_number_takes_the_last_number_or_the_boxed_one(
    text: str, number: float | None
) -> None:
    assert last_number(text) == number


def test_numeric_compares_within_tolerance_relative_above_one() -> None:
    assert numeric("it is 100.00001", answer=100) == 1.0
    assert numeric("it is 100.001", answer=100) == 0.0
    assert numeric("it is 100.001", answer="100", tolerance=1e-3) == 1.0
    assert numeric("0.75", answer="3/4") == 1.0
    assert numeric("1,000", answer=1000) == 1.0
    assert numeric("nothing", answer=3) == 0.0


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert exact_match(" Paris\n", answer="Paris") == 1.0
    assert exact_match("paris", answer="Paris") == 0.0
    assert exact_match("12", answer=12) == 1.0


def test_builtins_without_an_answer_fail_with_a_named_task() -> None:
    for reward in (exact_match, numeric):
        with pytest.raises(RewardError, match=r"^task 'q1': the reward function raised "):
            score(reward, "q1", "12", {})
    with pytest.raises(RewardError, match=r"task 'q2': .*needs a number as 'answer'"):
        score(numeric, "q2", "12", {"answer": "twelve"})


def test_load_reward_finds_builtins_dotted_paths_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards_mod.py").write_text(
        "def starts(completion, answer, **_):\n    return completion.startswith(str(answer))\n"
        "class Nested:\n    @staticmethod\n    def always(completion, **_):\n        return 1.0\n"
    )
    assert load_reward("numeric") is numeric
    assert load_reward("bots_refs:exact_match") is exact_match
    assert load_reward("bots_refs.numeric") is numeric
    assert load_reward("my_rewards_mod:starts")("12", answer=1) is True
    assert load_reward("my_rewards_mod:Nested.always")("x") == 1.0
    assert load_reward("my_rewards_mod.py:starts")("2", answer=1) is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exact", "unknown reward 'exact': use exact_match, numeric or module:callable"),
        (
            "no_such_module_xyz:f",
            "reward 'no_such_module_xyz:f': no module named 'no_such_module_xyz'",
        ),
        ("no_such_pkg_xyz.sub.f", "no module named 'no_such_pkg_xyz.sub'"),
        ("bots_refs:no_such_fn", "module 'bots_refs' has no attribute 'no_such_fn'"),
        ("bots_refs:__all__", "'__all__' is not callable"),
        ("missing_file.py:f", "no file 'missing_file.py'"),
        (":f", "is not of the form module:callable"),
    ],
)
def test_a_reward_that_names_nothing_callable_is_refused(spec: str, message: str) -> None:
    with pytest.raises(RewardSpecError) as info:
        load_reward(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_reward_module_that_fails_to_import_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_reward_mod.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(RewardSpecError, match="importing 'broken_reward_mod' failed"):
        load_reward("broken_reward_mod:f")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "returned 1.5, outside [0, 1]"),
        (-0.1, "returned -0.1, outside [0, 1]"),
        (math.nan, "returned nan, outside [0, 1]"),
        (math.inf, "returned inf, outside [0, 1]"),
        ("yes", "returned 'yes', not a number"),
        (None, "returned 'None', not a number"),
    ],
)
def test_a_reward_value_outside_zero_one_names_the_task(value: Any, message: str) -> None:
    with pytest.raises(RewardError) as info:
        score(lambda c, **kw: value, "task-7", "text", {})
    assert str(info.value) == f"task 'task-7': the reward function {message}"
    assert info.value.task_key == "task-7"


def test_reward_values_bools_and_fractions_are_accepted() -> None:
    assert score(lambda c, **kw: True, "k", "", {}) == 1.0
    assert score(lambda c, **kw: 0, "k", "", {}) == 0.0
    assert score(lambda c, **kw: 0.25, "k", "", {}) == 0.25


def test_keyboard_interrupt_in_a_reward_is_not_turned_into_a_reward_error() -> None:
    def stop(completion: str, **_: Any) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(stop, "k", "", {})


# --- task files ----------------------------------------------------------------------


def test_task_file_splits_prompt_reward_fields_and_pool_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tasks.jsonl",
        '{"key": "a", "prompt": "1+1=", "answer": 2, "weak": 0.1, "tolerance": 0.5}\n'
        "\n"
        '{"key": 7, "prompt": [{"role": "user", "content": "hi"}], "answer": "x", "strong": null}\n',
    )
    assert read_task_file(path) == [
        RefTask("a", "1+1=", {"answer": 2, "tolerance": 0.5}, {"weak": 0.1}),
        RefTask("7", [{"role": "user", "content": "hi"}], {"answer": "x"}, {}),
    ]


def test_csv_task_files_work_too(tmp_path: Path) -> None:
    path = _write(tmp_path, "tasks.csv", 'key,prompt,answer\na,"say ""1""",1\nb,2+2=,\n')
    assert read_task_file(path) == [
        RefTask("a", 'say "1"', {"answer": "1"}),
        RefTask("b", "2+2=", {"answer": None}),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"key": "a", "prompt": "x"}\n{"key": "q2", "answer": 3}\n',
            ":2: task 'q2' has no prompt",
        ),
        ('{"key": "q3", "prompt": ""}\n', ":1: task 'q3' has no prompt"),
        ('{"key": "q4", "prompt": 5}\n', ":1: task 'q4': prompt must be text or a list"),
        ('{"prompt": "x"}\n', ":1: missing key"),
        ('{"key": "a", "prompt": "x"}\n{"key": "a", "prompt": "y"}\n', ":2: duplicate key 'a'"),
        ('{"key": "q5", "prompt": "x", "weak": 2}\n', ":1: task 'q5': weak must be in [0, 1]"),
        ('{"key": "a", "prompt": "x"\n', ":1: invalid JSON"),
    ],
)
def test_a_bad_task_line_is_one_line_with_file_line_and_task(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, "tasks.jsonl", text)
    with pytest.raises(TaskFileError) as info:
        read_task_file(path)
    assert str(info.value).startswith(path + message)
    assert "\n" not in str(info.value)


# --- result files and merging -------------------------------------------------------


def test_merge_joins_weak_and_strong_into_a_file_bots_pool_create_reads(tmp_path: Path) -> None:
    weak = _write(tmp_path, "w.jsonl", '{"key": "a", "weak": 0.25}\n{"key": "b", "weak": 0.5}\n')
    strong = _write(tmp_path, "s.csv", "key,strong,prior_alpha\nb,0.75,\na,1.0,2\n")
    rows = merge_results([weak, strong])
    assert rows == [
        ("a", {"weak": 0.25, "strong": 1.0, "prior_alpha": 2.0}),
        ("b", {"weak": 0.5, "strong": 0.75}),
    ]
    for name in ("merged.jsonl", "merged.csv"):
        out = str(tmp_path / name)
        bots_refs.write_result_file(out, rows)
        assert read_result_file(out) == rows
        tasks = read_tasks(out)  # what `bots pool create --tasks` reads
        assert [(t.key, t.weak, t.strong) for t in tasks] == [("a", 0.25, 1.0), ("b", 0.5, 0.75)]


def test_merge_refuses_conflicts_and_one_sided_tasks(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.jsonl", '{"key": "k", "weak": 0.25}\n{"key": "m", "weak": 0.5}\n')
    b = _write(tmp_path, "b.jsonl", '{"key": "k", "weak": 0.5, "strong": 1}\n')
    with pytest.raises(RefsError, match=f"task 'k': weak is 0.25 in {re.escape(a)} but 0.5 in"):
        merge_results([a, b])
    c = _write(tmp_path, "c.jsonl", '{"key": "k", "strong": 1}\n')
    with pytest.raises(RefsError, match=r"task 'm' has weak \(from .*a.jsonl\) but no strong"):
        merge_results([a, c])
    d = _write(tmp_path, "d.jsonl", '{"key": "k", "prompt": "x", "weak": 0.1}\n')
    with pytest.raises(TaskFileError, match=r"unknown field.*'prompt'"):
        merge_results([d])


# --- progress file -------------------------------------------------------------------

SETTINGS = {"model": "m", "n": 2, "seed": 0}


def test_progress_file_round_trips_and_drops_a_half_written_last_line(tmp_path: Path) -> None:
    path = str(tmp_path / "p.jsonl")
    with ProgressFile(path, SETTINGS) as journal:
        assert journal.load() == {}
        journal.append([TaskResult("a", (1.0, 0.0)), TaskResult("b", (1.0, 1.0))])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "c", "rate": 0.5, "rew')  # the process died here
    results = ProgressFile(path, SETTINGS).load()
    assert {k: r.rate for k, r in results.items()} == {"a": 0.5, "b": 1.0}
    with ProgressFile(path, SETTINGS) as journal:
        journal.load()
        journal.append([TaskResult("c", (0.0, 0.0))])
    lines = Path(path).read_text().splitlines()
    assert [json.loads(line).get("key") for line in lines] == [None, "a", "b", "c"]


def test_progress_file_of_other_settings_is_refused_with_the_difference(tmp_path: Path) -> None:
    path = str(tmp_path / "p.jsonl")
    with ProgressFile(path, SETTINGS) as journal:
        journal.append([TaskResult("a", (1.0, 0.0))])
    with pytest.raises(ProgressFileError, match=r"other settings \(n 4 here, 2 there\)"):
        ProgressFile(path, {**SETTINGS, "n": 4}).load()
    Path(path).write_text(
        '{"format": "bots-refs-progress/1", "settings": {"model": "m", "n": 2, "seed": 0}}\n{"key": "a"\n{"key": "b", "rewards": [1, 1]}\n'
    )
    with pytest.raises(ProgressFileError, match=r":2: damaged line"):
        ProgressFile(path, SETTINGS).load()


def test_task_seeds_depend_on_seed_and_key_only() -> None:
    assert derive_seed(0, "a") == derive_seed(0, "a")
    assert len({derive_seed(0, "a"), derive_seed(1, "a"), derive_seed(0, "b")}) == 3
    assert 0 <= derive_seed(0, "a") < 2**63


def test_progress_bar_shows_rate_and_eta() -> None:
    bar = EtaProgress("weak", 100, stream=io.StringIO(), enabled=True)
    bar.update(25)
    text = bar.render(now=bar._start + 50.0)
    assert text.endswith("25/100 tasks, 0.50 tasks/s, ETA 0:02:30")
    assert text.startswith("weak [#######-----")


# --- the vLLM backend, against a stand-in for the vllm module -------------------------


class _CharTokenizer:
    """Characters as token ids (their code points); no special tokens, no chat template."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(map(chr, ids))


class _FakeVllm:
    """What VllmBackend uses of vllm: LLM(model=...).generate(requests, params) and SamplingParams."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[Any]]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.__dict__.update(kwargs)

        class LLM:
            def __init__(self, model: str, **kwargs: Any) -> None:
                self.model = model

            def generate(self, requests: list[Any], params: list[Any], use_tqdm: bool) -> list[Any]:
                fake.calls.append((requests, params))
                outputs = []
                for p in params:  # completions: a digit drawn from the request's seed
                    rng = random.Random(p.seed)
                    texts = [[ord(str(rng.randrange(10)))] for _ in range(p.n)]
                    outputs.append(
                        SimpleNamespace(outputs=[SimpleNamespace(token_ids=t) for t in texts])
                    )
                return outputs

        self.SamplingParams = SamplingParams
        self.LLM = LLM


def test_the_vllm_backend_sends_token_ids_n_and_a_seed_per_task_and_shares_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)  # type: ignore[arg-type]
    tasks = _write(
        tmp_path,
        "tasks.jsonl",
        "".join(f'{{"key": "k{i}", "prompt": "q{i}", "answer": "01234"}}\n' for i in range(5)),
    )

    def digit_below_5(completion: str, answer: str, **_: Any) -> bool:
        return completion in answer

    def go(out: str) -> bots_refs.MeasureSummary:
        return bots_refs.measure(
            tasks, model="some/model", reward=digit_below_5, column="strong", out=out,
            backend="vllm", tokenizer=_CharTokenizer(), batch_size=2,
            sampling=bots_refs.Sampling(n=4, temperature=0.7, top_p=0.9, max_new_tokens=3, seed=5),
        )  # fmt: skip

    summary = go(str(tmp_path / "strong.jsonl"))
    requests = [r for call in fake.calls for r in call[0]]
    params = [p for call in fake.calls for p in call[1]]
    assert [len(call[0]) for call in fake.calls] == [2, 2, 1]  # batches of 2 tasks
    assert requests == [{"prompt_token_ids": [ord("q"), ord(str(i))]} for i in range(5)]
    assert [(p.n, p.temperature, p.top_p, p.max_tokens) for p in params] == [(4, 0.7, 0.9, 3)] * 5
    assert [p.seed for p in params] == [derive_seed(5, f"k{i}") for i in range(5)]
    for i in range(5):  # the rates are the shared scoring of what vLLM returned
        rng = random.Random(derive_seed(5, f"k{i}"))
        assert summary.rates[f"k{i}"] == sum(rng.randrange(10) < 5 for _ in range(4)) / 4
    assert read_result_file(summary.out) == [(k, {"strong": r}) for k, r in summary.rates.items()]
    fake.calls.clear()
    again = go(str(tmp_path / "strong.jsonl"))  # the progress file has every task: no generation
    assert (again.measured, again.resumed, fake.calls) == (0, 5, [])
    assert again.rates == summary.rates


def test_without_vllm_the_vllm_backend_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import of vllm now fails
    tasks = _write(tmp_path, "tasks.jsonl", '{"key": "a", "prompt": "x"}\n')
    with pytest.raises(RefsError, match=r"vllm is not installed .*bots-selector\[vllm\]"):
        bots_refs.measure(
            tasks, model="m", reward="exact_match", column="weak", backend="vllm",
            tokenizer=_CharTokenizer(),
        )  # fmt: skip


# --- prompts -------------------------------------------------------------------------


class _ChatTokenizer(_CharTokenizer):
    chat_template = "{role}: {content}"

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        assert add_generation_prompt and not tokenize
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_chat_prompts_go_through_the_template_and_text_prompts_only_with_chat() -> None:
    text = RefTask("t", "2+2=")
    messages = RefTask(
        "m", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    chat = _ChatTokenizer()
    decode = chat.decode
    assert decode(encode_prompt(chat, text, chat=False)) == "2+2="
    assert decode(encode_prompt(chat, text, chat=True)) == "<user>2+2=<assistant>"
    assert (
        decode(encode_prompt(chat, messages, chat=False)) == "<system>be brief<user>hi<assistant>"
    )
    with pytest.raises(RefsError, match="task 'm': a chat prompt needs a chat template"):
        encode_prompt(_CharTokenizer(), messages, chat=False)


def test_a_model_written_as_a_missing_path_is_refused_before_any_download() -> None:
    for model in ("./no-such-model", "/no/such/model", "a/b/c"):
        with pytest.raises(RefsError, match=f"no model directory '{re.escape(model)}'"):
            bots_refs.load_tokenizer(model)
