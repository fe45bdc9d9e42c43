"""
The provider on a real distributed Airflow: CeleryExecutor with Redis as the broker and PostgreSQL as
the metadata database and result backend, 2 Celery worker processes and 2 triggerers, all on one
free-tier key whose connection has ``budget=redis``. A mapped DAG of 60 prompts (6 times the free
tier's hourly creation limit) runs time-scaled:

- every prompt is paid once (60 submissions, no duplicates) and every task succeeds;
- the key is answered 429 for at most 5% of the submissions;
- at least 95% of the creation limit is used in every window while tasks queue for it: windows of
  the limit's period, one after another from the first creation, every one before the last (the
  sliding share, the window over the span of each ``limit`` consecutive creations, is printed too);
- both triggerers ran the waits, and their polls, paced by one shared budget, drew no 429.

Select it with ``-m celery`` (or the module's name). 12 minutes on a loaded 2-core machine (728 s): 3 to
start the stack, 6 windows of 60 s, and the last downloads.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.budget.redis_server import RedisServer
from airflow_provider_cerebraform.models import PUBLISHED_LIMITS, Bucket, Tier

from .harness import TEST_DAGS, AirflowStack, new_api_key, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.real_airflow, pytest.mark.celery, pytest.mark.timeout(1500)]

#: An emulated hour (the creation window) lasts 60 s. At 120x (30 s windows) the workers of a loaded
#: 2-core machine could not start tasks fast enough to use the windows (7 / 6 / 6 / 6 / 6 / 2 ...
#: creations of 10, every task run taking about 30 s), though the budget refused nothing.
TIME_SCALE = 60.0
PROMPTS = 60
DAG_ID = "cf_real_mapped"
CREATE = PUBLISHED_LIMITS[Tier.FREE][Bucket.CREATE]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def celery_stack(
    tmp_path_factory: pytest.TempPathFactory,
    metadata_database: Callable[[], tuple[str, str]],
    redis_server: RedisServer,
) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("real-airflow-celery")
    _name, url = metadata_database()
    with AirflowStack(
        root,
        api_key=new_api_key(),
        time_scale=TIME_SCALE,
        emulator_args=["--credits", "100000"],
        dag_sources={"real_airflow_dags": TEST_DAGS},
        parallelism=32,
        database_url=url,
        executor="CeleryExecutor",
        broker_url=redis_server.url.rsplit("/", 1)[0] + "/1",
        celery_workers=2,
        celery_concurrency=4,
        triggerers=2,
        tier="free",
        connection_extra={"budget": "redis", "redis_url": redis_server.url.rsplit("/", 1)[0] + "/2"},
        extra_env={"AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64"},
        # Two more processes than the LocalExecutor stack, each importing Airflow: slower to start.
        startup_timeout=420.0,
    ) as airflow:
        print(f"\n[celery] stack ready in {airflow.startup_seconds:.1f} s under {root}")
        yield airflow


def windows_from_first(created: list[float], window: float) -> list[int]:
    """Creations per consecutive window, counted from the first creation."""
    counts: list[int] = []
    for at in created:
        k = int((at - created[0]) // window)
        counts.extend([0] * (k + 1 - len(counts)))
        counts[k] += 1
    return counts


def test_celery_workers_and_triggerers_share_one_redis_budget(celery_stack: AirflowStack) -> None:
    stack = celery_stack
    assert stack.emulator is not None
    admin = stack.emulator.admin
    stack.wait_for_dag(DAG_ID, "cf_real_mapped.py")
    stack.unpause(DAG_ID)
    prompts = [f"a lighthouse in the fog, celery {n}" for n in range(PROMPTS)]
    run_id = "celery_shared_budget"
    began = time.monotonic()
    stack.trigger(DAG_ID, run_id, conf={"prompts": prompts})

    # Which triggerer holds each deferred wait, sampled while the run goes on.
    holders: dict[int, set[str]] = {}

    def ended() -> str | None:
        answer = stack.api(
            "GET",
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
            params={"limit": 100, "task_id": "generate"},
        )
        for ti in answer["task_instances"]:
            triggerer = (ti.get("trigger") or {}).get("triggerer_id")
            if ti["state"] == "deferred" and triggerer is not None:
                holders.setdefault(triggerer, set()).add(str(ti["map_index"]))
        state = stack.dag_run(DAG_ID, run_id)["state"]
        return state if state in ("success", "failed") else None

    state = wait_until(ended, timeout=1000, what="the run to end", interval=0.5, check=stack.check)
    wall = time.monotonic() - began
    answer = stack.api(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "task_id": "generate"}
    )
    tis = answer["task_instances"]
    stats = admin.stats()
    paid = Counter(task["prompt"] for task in stats["tasks"])
    submissions = int(stats["submissions"]["total"])
    duplicates = sum(n - 1 for n in paid.values() if n > 1)
    create_429s = int(stats["rate_limited"].get("submit", 0))
    poll_429s = int(stats["rate_limited"].get("poll", 0))
    polls = sum(stats["requests"].get(group, 0) for group in ("status", "result"))
    window = CREATE.period / TIME_SCALE
    created = sorted(task["created_at"] for task in stats["tasks"])
    per_window = windows_from_first(created, window)
    shares = [count / CREATE.limit for count in per_window[:-1]]
    # The sliding windows the service counts: the window ending at each creation holds `limit` of them
    # over this span; window / span is the share of the limit used there (1.0: in full, never above).
    spans = [created[n] - created[n - CREATE.limit] for n in range(CREATE.limit, len(created))]
    sliding = [window / span for span in spans]
    figures = {
        "state": state,
        "wall_s": round(wall, 1),
        "submissions": submissions,
        "duplicates": duplicates,
        "create_429s": create_429s,
        "429s_per_success": round(create_429s / max(1, submissions), 3),
        "per_window": per_window,
        "share_per_full_window": [round(share, 2) for share in shares],
        "sliding_share_min": round(min(sliding), 3),
        "sliding_share_max": round(max(sliding), 3),
        "sliding_windows_at_95pct": f"{sum(share >= 0.95 for share in sliding)} of {len(sliding)}",
        "sliding_shares": [round(share, 2) for share in sliding],
        "polls": polls,
        "poll_429s": poll_429s,
        "waits_per_triggerer": {str(job): len(indexes) for job, indexes in holders.items()},
        "tries": Counter(ti.get("try_number") for ti in tis),
    }
    print(f"\n[celery] {json.dumps(figures, default=str)}")

    assert state == "success", Counter(ti["state"] for ti in tis)
    assert len(tis) == PROMPTS and {ti["state"] for ti in tis} == {"success"}
    assert paid == Counter(prompts), "a prompt was paid twice or never"
    assert submissions == PROMPTS and duplicates == 0
    assert create_429s / submissions <= 0.05, figures
    # Never above the limit in any sliding window (the emulator's clock; its 429s would say so too).
    assert max(sliding) <= 1.0 + 0.01, figures
    # The limit used in every window while tasks queue for it: each full window from the first
    # creation (the last one holds what is left). A task refused a slot defers while the shared budget
    # keeps the slot for it, and comes back ahead of it; before that (a window's refused tasks came back
    # only when it opened, and a Celery worker took 15 to 30 s to resume one) windows went by with 1 of
    # 10 creations: 10 / 9 / 9 / 10 / 1 / 10 / 9 / 2. With kept slots, at a load average of 2 to 5:
    # 10 / 10 / 10 / 10 / 10 / 10, and 48 of 50 sliding windows at 0.99 (two at 0.72 and 0.76, where
    # one task came back late). The sliding share is reported, not asserted: one late resume on a
    # loaded machine dents it without leaving any window's quota unused.
    assert min(shares) >= 0.95, figures
    # The poll budget is shared: both triggerers held waits, and together they drew no 429.
    assert len(holders) == 2, figures
    assert poll_429s == 0, figures
