"""The batch state's log in real storage (``file://``): fold, compaction, merging and a crashed compaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_cerebraform.batch_state import MAX_SEGMENTS, BatchState
from airflow_provider_cerebraform.media import as_storage_path
from airflow_provider_cerebraform.pacing import SlidingWindow, WindowRules, WindowState

if TYPE_CHECKING:
    from pathlib import Path


def _events(state: BatchState, row: str, n: int, token: str = "run#1") -> None:
    state.append({"e": "intent", "id": row, "n": n, "token": token, "kind": "image", "at": 1.0})
    state.append(
        {"e": "submitted", "id": row, "n": n, "token": token, "rid": f"r-{row}-{n}", "at": 2.0, "credits": 1}
    )


def test_compaction_and_merging_keep_the_same_state(tmp_path: Path) -> None:
    output = as_storage_path(f"file://{tmp_path}")
    for session in range(MAX_SEGMENTS + 3):  # each load compacts the log into a segment; then they merge
        state = BatchState.load(output)
        _events(state, f"row-{session}", 1)
        if session % 2:
            state.append(
                {"e": "stored", "id": f"row-{session}", "n": 1, "rid": f"r-row-{session}-1", "files": []}
            )
    final = BatchState.load(output)
    again = BatchState.load(output)
    assert {k: v.__dict__ for k, v in final.rows.items()} == {k: v.__dict__ for k, v in again.rows.items()}
    assert len(final.rows) == MAX_SEGMENTS + 3
    assert final.credits_spent() == MAX_SEGMENTS + 3
    assert sum(1 for row in final.rows.values() if row.stage == "stored") == (MAX_SEGMENTS + 3) // 2
    assert len(list((tmp_path / "_cerebraform" / "segments").iterdir())) <= MAX_SEGMENTS + 1
    assert not list((tmp_path / "_cerebraform" / "log").iterdir())


def test_a_compaction_stopped_before_removing_the_log_applies_nothing_twice(tmp_path: Path) -> None:
    output = as_storage_path(f"file://{tmp_path}")
    state = BatchState.load(output)
    _events(state, "a", 1)
    log = tmp_path / "_cerebraform" / "log"
    kept = {path.name: path.read_bytes() for path in log.iterdir()}
    BatchState.load(output)  # compacts
    for name, data in kept.items():  # as if the compacting try died before removing its log
        (log / name).write_bytes(data)
    state = BatchState.load(output)
    assert state.rows["a"].credits == 1 and state.rows["a"].stage == "submitted"
    assert state.pending("run#2") == {"r-a-1": "a"}
    assert not list(log.iterdir())


def test_free_at_and_remember_count_the_batchs_own_submissions() -> None:
    rules = WindowRules(10, 100.0)
    state = WindowState(slots=[[n, 50.0 + n] for n in range(10)])  # a full window
    assert rules.free_at(state, 60.0, 1) == 150.0 + rules.margin  # the oldest leaves
    assert rules.free_at(state, 60.0, 3) == 152.0 + rules.margin  # the third oldest leaves
    assert rules.free_at(WindowState(), 60.0, 5) == 60.0
    window = SlidingWindow(10, 100.0, clock=lambda: 1000.0)
    window.remember([1.0, 2.0, 500.0])  # 500 s ago is outside the window
    assert len(window.state.slots) == 2
    for _ in range(8):  # 2 remembered + 8 = the window's 10
        assert window.reserve(max_delay=0).admitted
    assert not window.reserve(max_delay=0).admitted
