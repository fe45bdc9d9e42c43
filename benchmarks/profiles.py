"""The two sizes of a run: ``full`` (the report in docs/) and ``smoke`` (what CI runs so nothing rots)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.common import MIB
from benchmarks.triggerer import Phase


def spread(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` durations evenly spread from ``low`` to ``high`` emulated seconds. Spreading them (rather
    than round values, which are multiples of the one-minute polling window) keeps the moments jobs
    finish from lining up with the window's edges, which would flatter whichever poller bursts."""
    step = (high - low) / max(1, count - 1)
    return tuple(round(low + step * index, 1) for index in range(count))


#: Comparison job mix (emulated seconds): short enough that naive pollers finish in a bounded time.
_COMPARE = spread(61.0, 241.0, 40)


@dataclass(frozen=True)
class Profile:
    name: str
    # 1. triggerer
    triggerer_phases: tuple[Phase, ...]
    worker_per_phase: bool
    # 2. submission under the creation limit: (tier, time scale, pacer mode) rows
    submission_rows: tuple[tuple[str, float, str], ...]
    submission_slots: int
    # 3. streaming: sizes in bytes, targets, repetitions (median)
    media_sizes: tuple[int, ...]
    media_targets: tuple[str, ...]
    media_repeats: int
    worker_per_transfer: bool
    # 4. worker slots: jobs (image, video) and time scale
    slot_jobs: tuple[int, int]
    slot_time_scale: float
    # 5. imports and parsing: repetitions (median)
    import_repeats: int
    parse_repeats: int
    # 6. shared budgets: the burst (tier, time scale, worker processes) and the polling row
    #    (waits, time scale, triggerer processes)
    budget_burst: tuple[str, float, int] = ("free", 1800.0, 2)
    budget_poll: tuple[int, float, int] = (40, 60.0, 2)
    # 7. batches: dataset sizes, time scale, the key's share (a smaller share: more windows per row)
    batch_sizes: tuple[int, ...] = (1000, 10000)
    batch_time_scale: float = 360.0
    batch_rate_share: float = 1.0
    # 8. the real stack (opt-in for --smoke): batch and mapped sizes, time scale, executor slots, timeout
    stack_batch_prompts: int = 2000
    stack_mapped_prompts: int = 1000
    stack_time_scale: float = 360.0
    stack_parallelism: int = 4
    stack_run_timeout: float = 3600.0


FULL = Profile(
    name="full",
    triggerer_phases=(
        Phase("scale", "provider", 800, 200, spread(61.0, 601.0, 100), 10.0, 50),
        Phase("compare", "provider", 160, 40, _COMPARE, 10.0),
        Phase("compare", "http_sensor", 160, 40, _COMPARE, 10.0),
        Phase("compare", "vendor_loop", 160, 40, _COMPARE, 10.0),
    ),
    worker_per_phase=True,
    submission_rows=(
        ("paid", 180.0, "per-process"),
        ("paid", 180.0, "shared"),
        ("free", 180.0, "per-process"),
        ("free", 180.0, "shared"),
    ),
    submission_slots=32,
    media_sizes=(64 * MIB, 1024 * MIB),
    media_targets=("file", "s3"),
    media_repeats=2,
    worker_per_transfer=True,
    slot_jobs=(10, 10),
    slot_time_scale=20.0,
    import_repeats=7,
    parse_repeats=5,
    budget_burst=("paid", 180.0, 8),
    budget_poll=(1000, 20.0, 2),
)

SMOKE = Profile(
    name="smoke",
    triggerer_phases=(
        Phase("compare", "provider", 16, 4, spread(20.0, 40.0, 5), 60.0, 10),
        Phase("compare", "http_sensor", 16, 4, spread(20.0, 40.0, 5), 60.0),
        Phase("compare", "vendor_loop", 16, 4, spread(20.0, 40.0, 5), 60.0),
    ),
    worker_per_phase=False,
    submission_rows=(("free", 1800.0, "per-process"), ("free", 1800.0, "shared")),
    submission_slots=8,
    media_sizes=(4 * MIB,),
    media_targets=("file", "s3"),
    media_repeats=1,
    worker_per_transfer=False,
    slot_jobs=(2, 1),
    slot_time_scale=40.0,
    import_repeats=1,
    parse_repeats=1,
    batch_sizes=(30,),
    batch_time_scale=3600.0,
    batch_rate_share=0.05,
    stack_batch_prompts=20,
    stack_mapped_prompts=4,
    stack_run_timeout=600.0,
)

PROFILES = {"full": FULL, "smoke": SMOKE}
