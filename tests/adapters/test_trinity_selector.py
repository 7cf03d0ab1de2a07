"""BotsSelector as Trinity-RFT drives it: get_indices -> feedback -> state_dict -> resume."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from bots_adapters.trinity import BotsSelector
from bots_client import SelectorClient

datasets = pytest.importorskip("datasets")  # installed with the TRL stack in CI


@dataclasses.dataclass
class SelectorConfig:
    """The fields of Trinity's DataSelectorConfig that a selector reads."""

    selector_type: str = "bots_adapters.trinity.BotsSelector"
    seed: int = 42
    feature_keys: list[str] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


class Reader:
    """What Trinity's _HFBatchReader gives a selector: the dataset and its size."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.dataset_size = len(dataset)


def make_dataset(n: int = 30) -> Any:
    return datasets.Dataset.from_list(
        [
            {"question": f"q{i}", "id": f"task-{i}", "weak": i / n / 2, "strong": 0.5 + i / n / 2}
            for i in range(n)
        ]
    )


def make(target: str, **kw: Any) -> BotsSelector:
    cfg = SelectorConfig(
        feature_keys=["weak", "strong"],
        kwargs={
            "target": target,
            "pool": "tri",
            "run_id": "exp",
            "rollouts": 4,
            "key_column": "id",
            **kw,
        },
    )
    return BotsSelector(Reader(make_dataset()), cfg)


def test_selects_reports_and_resumes_with_the_posteriors(
    bots_target: str, client: SelectorClient
) -> None:
    sel = make(bots_target)
    assert client.get_pool("tri").tasks_with_references == 30
    for _ in range(3):
        idx = sel.get_indices(5)
        assert len(set(idx)) == 5
        # Trinity's pass-rate operator: the mean reward of each selected task.
        sel.feedback(idx, [1.0 if i % 2 else 0.25 for i in idx])
    state = sel.state_dict()
    assert state["current_step"] == 3 and state["current_index"] == 15
    assert client.get_pool("tri").steps_applied == 3
    before = {
        p.task.key: (p.alpha, p.beta) for _, ch in client.export_posteriors("tri") for p in ch
    }
    sel.close()

    # A new process: Trinity builds the selector again and restores its state.
    resumed = make(bots_target)
    resumed.load_state_dict(state)
    after = {p.task.key: (p.alpha, p.beta) for _, ch in client.export_posteriors("tri") for p in ch}
    assert after == before  # nothing lost (Trinity's own selector would start from the prior)
    idx, extra = resumed.get_indices(5, return_extra_info=True)
    assert extra["step"] == 3
    assert client.get_pool("tri").selections_opened == 4  # step 3 is new, not a replay
    resumed.feedback(idx, [0.5] * 5)
    resumed.close()
    assert client.get_pool("tri").steps_applied == 4


def test_feedback_reaches_the_selection_of_its_indices_when_steps_overlap(
    bots_target: str, client: SelectorClient
) -> None:
    sel = make(bots_target, final_on_feedback=False)
    a = sel.get_indices(20)
    b = sel.get_indices(20)  # explorer runs ahead: two open selections (of 30 tasks: they overlap)
    assert set(a) & set(b)
    sel.feedback(b, [1.0] * 20)
    sel.feedback(a, [0.0] * 20)
    sel.close()
    info = client.get_pool("tri")
    assert info.steps_applied == 2 and info.open_selections == 0


def test_target_is_required() -> None:
    with pytest.raises(ValueError, match=r"kwargs\.target"):
        BotsSelector(Reader(make_dataset(2)), SelectorConfig())


def test_trinity_resolves_the_selector_by_dotted_path(bots_target: str) -> None:
    """With Trinity-RFT installed: its registry, config class and reader drive the selector."""
    selector_mod = pytest.importorskip("trinity.buffer.selector")
    from trinity.buffer.reader.file_reader import _HFBatchReader
    from trinity.common.config import DataSelectorConfig

    cls = selector_mod.SELECTORS.get("bots_adapters.trinity.BotsSelector")
    assert cls is BotsSelector
    reader = _HFBatchReader(
        make_dataset(), name="t", default_batch_size=4, enable_progress_bar=False
    )
    config = DataSelectorConfig(
        selector_type="bots_adapters.trinity.BotsSelector",
        feature_keys=["weak", "strong"],
        kwargs={
            "target": bots_target,
            "pool": "tri",
            "run_id": "exp",
            "rollouts": 4,
            "key_column": "id",
        },
    )
    sel = cls(reader, config)
    idx = sel.get_indices(4)
    rows = reader.select_batch(idx)
    assert [r["id"] for r in rows] == [f"task-{i}" for i in idx]
    sel.feedback(idx, [0.5] * 4)
    sel.close()
