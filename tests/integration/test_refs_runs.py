"""`bots refs` with a real (tiny, random) model on CPU: rates, seeds, resuming, errors, docs/refs.md.

The model is a 2-layer Llama built from a config with a character tokenizer
built here, saved with ``save_pretrained``: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("BOTS_REQUIRE_ADAPTER_DEPS") != "1":  # CI installs them and wants these run
    pytest.importorskip("torch", reason="bots refs needs torch: pip install -e '.[refs]'")
    pytest.importorskip("transformers", reason="bots refs needs transformers: '.[refs]'")

import torch
from bots_client import SelectorClient
from bots_refs import Sampling, measure
from bots_server._cli import main
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
CHARS = list("0123456789+= ")
N = 8


def save_tiny_model(path: Path, seed: int, *, weights: bool = True) -> Path:
    """A character tokenizer and a 2-layer Llama (random weights from ``seed``) in ``path``."""
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()  # "1", "2" decode to "12", not "1 2"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config)
    if weights:
        model.save_pretrained(path)
    else:
        config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("model"), seed=0))


def write_tasks(path: Path, count: int = 12) -> str:
    """``count`` tasks ``a+b=`` whose answers have 1 to 10 distinct digits (see first_char_in_answer)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            answer = "0123456789"[: 1 + i % 10]
            f.write(
                json.dumps({"key": f"t{i}", "prompt": f"{i % 10}+{i // 10}=", "answer": answer})
            )
            f.write("\n")
    return str(path)


STOP_AFTER: dict[str, int | None] = {"calls": None}


def first_char_in_answer(completion: str, answer: str, **_: Any) -> float:
    """1 when the completion starts with one of the answer's characters.

    With ``STOP_AFTER["calls"]`` set it raises KeyboardInterrupt after that
    many calls, like Ctrl-C in the middle of a run.
    """
    if STOP_AFTER["calls"] is not None:
        if STOP_AFTER["calls"] == 0:
            raise KeyboardInterrupt
        STOP_AFTER["calls"] -= 1
    return 1.0 if completion[:1] and completion[0] in answer else 0.0


SAMPLING = Sampling(n=N, max_new_tokens=2)


def run(out: Path, model: str, tasks: str, **kwargs: Any) -> dict[str, float]:
    """The rates of ``first_char_in_answer`` (settings: SAMPLING, 5 tasks per batch, unless given)."""
    settings: dict[str, Any] = {"sampling": SAMPLING, "batch_size": 5, **kwargs}
    reward = settings.pop("reward", first_char_in_answer)
    return measure(tasks, model=model, reward=reward, column="weak", out=str(out), **settings).rates


@pytest.fixture(scope="module")
def reference(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Rates of one uninterrupted run with the default settings of `run`."""
    where = tmp_path_factory.mktemp("reference")
    return run(where / "weak.jsonl", model_dir, write_tasks(where / "tasks.jsonl"))


def read_column(path: str, column: str) -> dict[str, float]:
    return {r["key"]: r[column] for r in map(json.loads, Path(path).read_text().splitlines())}


def progress_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()[1:]]


def test_a_reward_that_always_passes_gives_pass_rate_one(tmp_path: Path, model_dir: str) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    summary = measure(
        tasks, model=model_dir, reward=lambda c, **kw: 1.0, column="strong",
        sampling=Sampling(n=3, max_new_tokens=3),
    )  # fmt: skip
    assert summary.out == str(tmp_path / "tasks.strong.jsonl")
    lines = [json.loads(line) for line in Path(summary.out).read_text().splitlines()]
    assert lines == [{"key": f"t{i}", "strong": 1.0} for i in range(12)]
    assert (summary.tasks, summary.measured, summary.resumed, summary.at_one) == (12, 12, 0, 12)
    journal = [json.loads(line) for line in Path(summary.progress_file).read_text().splitlines()]
    assert journal[0]["settings"]["n"] == 3
    assert all(r["rewards"] == [1.0, 1.0, 1.0] for r in journal[1:])


def test_first_char_rates_come_in_steps_of_one_over_n_and_differ(
    reference: dict[str, float],
) -> None:
    assert list(reference) == [f"t{i}" for i in range(12)]
    assert all(0.0 <= r <= 1.0 and (r * N).is_integer() for r in reference.values())
    assert len(set(reference.values())) >= 3  # a random model: some tasks easier than others
    # Answers with more digits admit more first characters: t9 (10 digits) beats t0 (1 digit).
    assert reference["t9"] > reference["t0"]


def test_same_seed_same_rates_whatever_the_batches_other_seed_other_rates(
    tmp_path: Path, model_dir: str, reference: dict[str, float]
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    assert run(tmp_path / "a.jsonl", model_dir, tasks, batch_size=2) == reference
    assert run(tmp_path / "b.jsonl", model_dir, tasks, batch_size=12) == reference
    seed_1 = Sampling(n=N, max_new_tokens=2, seed=1)
    assert run(tmp_path / "c.jsonl", model_dir, tasks, sampling=seed_1) != reference


def test_temperature_zero_is_greedy_and_a_tiny_top_p_keeps_only_the_likeliest_token(
    tmp_path: Path, model_dir: str, reference: dict[str, float]
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    greedy = run(
        tmp_path / "a.jsonl",
        model_dir,
        tasks,
        sampling=Sampling(n=N, max_new_tokens=2, temperature=0.0),
    )
    assert set(greedy.values()) <= {0.0, 1.0}  # n identical rollouts per task
    nucleus = run(
        tmp_path / "b.jsonl", model_dir, tasks, sampling=Sampling(n=N, max_new_tokens=2, top_p=1e-6)
    )
    assert nucleus == greedy
    assert greedy != reference


def test_an_interrupted_run_resumes_and_counts_each_task_once(
    tmp_path: Path, model_dir: str, reference: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    monkeypatch.setitem(STOP_AFTER, "calls", 6 * N + 3)  # Ctrl-C in the 7th task's rollouts
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "weak.jsonl", model_dir, tasks)
    progress = tmp_path / "weak.jsonl.progress.jsonl"
    assert progress_keys(progress) == [f"t{i}" for i in range(6)]
    assert not (tmp_path / "weak.jsonl").exists()
    monkeypatch.setitem(STOP_AFTER, "calls", None)
    summary = measure(
        tasks, model=model_dir, reward=first_char_in_answer, column="weak",
        out=str(tmp_path / "weak.jsonl"), batch_size=5, sampling=SAMPLING,
    )  # fmt: skip
    assert (summary.measured, summary.resumed) == (6, 6)
    assert summary.rates == reference
    assert read_column(summary.out, "weak") == reference
    assert sorted(Counter(progress_keys(progress)).items()) == sorted(
        (f"t{i}", 1) for i in range(12)
    )


KILLER = '''
import os, signal
calls = 0

def reward(completion, answer, **_):
    """first_char_in_answer, but SIGKILLs its own process at call KILL_AT (when set)."""
    global calls
    calls += 1
    if os.environ.get("KILL_AT") and calls == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return 1.0 if completion[:1] and completion[0] in answer else 0.0
'''


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    tmp_path: Path, model_dir: str, reference: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "killer_reward.py").write_text(KILLER)
    write_tasks(tmp_path / "tasks.jsonl")
    monkeypatch.chdir(tmp_path)
    argv = [
        "refs", "measure", "tasks.jsonl", "--model", model_dir, "--reward", "killer_reward:reward",
        "--column", "weak", "-n", str(N), "--max-new-tokens", "2", "--batch-size", "3",
    ]  # fmt: skip
    env = {**os.environ, "KILL_AT": str(7 * N + 2)}  # inside task 8's rollouts
    proc = subprocess.run(
        [sys.executable, "-m", "bots_server", *argv], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    progress = tmp_path / "tasks.weak.jsonl.progress.jsonl"
    assert progress_keys(progress) == [f"t{i}" for i in range(7)]
    assert main(argv) == 0  # resumed here, where KILL_AT is unset
    assert sorted(Counter(progress_keys(progress)).items()) == sorted(
        (f"t{i}", 1) for i in range(12)
    )
    # The same rates as an uninterrupted run with the same seed (the same reward, by another name).
    assert read_column("tasks.weak.jsonl", "weak") == reference


def test_a_config_only_directory_gives_seeded_random_weights(tmp_path: Path) -> None:
    model = str(save_tiny_model(tmp_path / "config-only", seed=3, weights=False))
    assert not any(p.name.endswith((".safetensors", ".bin")) for p in Path(model).iterdir())
    tasks = write_tasks(tmp_path / "tasks.jsonl", count=4)
    once = run(tmp_path / "a.jsonl", model, tasks)
    assert run(tmp_path / "b.jsonl", model, tasks) == once


@pytest.mark.parametrize(
    ("reward_body", "message"),
    [
        (
            "return 1 / 0 if key_len > 1 else 1.0",
            "task 't1': the reward function raised ZeroDivisionError: division by zero",
        ),
        (
            "return 1.5 if key_len > 1 else 1.0",
            "task 't1': the reward function returned 1.5, outside [0, 1]",
        ),
        (
            "return float('nan') if key_len > 1 else 1.0",
            "task 't1': the reward function returned nan, outside [0, 1]",
        ),
    ],
)
def test_a_failing_reward_stops_with_one_line_naming_the_task(
    tmp_path: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], reward_body: str, message: str,
) -> None:  # fmt: skip
    (tmp_path / "bad_reward.py").write_text(
        f"def reward(completion, answer, **_):\n    key_len = len(answer)\n    {reward_body}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "bad_reward", raising=False)
    write_tasks(tmp_path / "tasks.jsonl", count=3)
    argv = ["refs", "measure", "tasks.jsonl", "--model", model_dir, "--reward", "bad_reward:reward",
            "--column", "weak", "-n", "2", "--max-new-tokens", "2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    # The task before it is kept; no result file is written for a run that failed.
    assert progress_keys(tmp_path / "tasks.weak.jsonl.progress.jsonl") == ["t0"]
    assert not (tmp_path / "tasks.weak.jsonl").exists()


def test_a_missing_reward_or_prompt_is_one_line_and_exit_2(
    tmp_path: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    write_tasks(tmp_path / "tasks.jsonl", count=2)
    base = ["refs", "measure", "tasks.jsonl", "--model", model_dir, "--column", "weak"]
    assert main([*base, "--reward", "no_such_rewards:check"]) == 2
    assert capsys.readouterr().err == (
        "error: reward 'no_such_rewards:check': no module named 'no_such_rewards'\n"
    )
    (tmp_path / "tasks.jsonl").write_text(
        '{"key": "t0", "prompt": "1+1="}\n{"key": "t1", "answer": 2}\n'
    )
    assert main([*base, "--reward", "numeric"]) == 2
    assert capsys.readouterr().err == "error: tasks.jsonl:2: task 't1' has no prompt\n"


def test_the_docs_commands_run_as_written_and_bots_pool_create_takes_the_result(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    text = (ROOT / "docs" / "refs.md").read_text()
    script = re.search(r"## Example\n.*?```bash\n(.*?)```", text, re.S)
    assert script, "docs/refs.md has no bash block under ## Example"
    save_tiny_model(tmp_path / "weak-model", seed=1)
    save_tiny_model(tmp_path / "strong-model", seed=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOTS_TARGET", target)  # the block's server: this test's, on a free port
    for line in script.group(1).strip().splitlines():
        if line.startswith("bots "):  # in this process: one torch import for all of them
            assert main(shlex.split(line)[1:]) == 0, capsys.readouterr().err
        else:
            subprocess.run(["bash", "-c", line], check=True, timeout=30)
    merged = [json.loads(line) for line in Path("tasks-refs.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in merged] == [["key", "strong", "weak"]] * 3
    with SelectorClient(target) as client:
        info = client.get_pool("math")
    assert (info.task_count, info.tasks_with_references) == (3, 3)

    # The page's Python block does the same from Python.
    python = re.search(r"## From Python\n.*?```python\n(.*?)```", text, re.S)
    assert python
    before = {name: Path(name).read_text() for name in ("weak.jsonl", "tasks-refs.jsonl")}
    exec(compile(python.group(1), "docs/refs.md", "exec"), {})
    for name, text in before.items():  # same seed and settings: the same rates
        assert Path(name).read_text() == text


def test_the_docs_reward_example_works_as_a_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "docs" / "refs.md").read_text()
    code = re.search(r"in `my_rewards.py`:\n\n```python\n(.*?)```", text, re.S)
    assert code
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(code.group(1)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    from bots_refs import load_reward

    reward = load_reward("my_rewards:first_line_is_answer")
    assert reward("5\n+5=10", answer=5) is True
    assert reward("55", answer=5) is False
    assert reward("", answer=5) is False


def test_the_vllm_backend_measures_the_same_way(tmp_path: Path, model_dir: str) -> None:
    pytest.importorskip(
        "vllm", reason="vllm is not installed (it needs a GPU machine); "
        "tests/unit/test_refs.py checks the backend against a stand-in",
    )  # fmt: skip
    tasks = write_tasks(tmp_path / "tasks.jsonl", count=6)
    always = measure(
        tasks, model=model_dir, reward=lambda c, **kw: 1.0, column="strong",
        out=str(tmp_path / "always.jsonl"), backend="vllm", sampling=SAMPLING,
    )  # fmt: skip
    assert set(always.rates.values()) == {1.0}
    once = run(tmp_path / "a.jsonl", model_dir, tasks, backend="vllm")
    assert all((r * N).is_integer() for r in once.values())
    assert run(tmp_path / "b.jsonl", model_dir, tasks, backend="vllm") == once
