"""
DAGs of the fault-injection tests (``tests/faults/``), run with ``dag.test()`` against the emulator.

Faults are armed by the test before a run, or by an ``arm_*`` task inside the DAG right before the
operator it targets, so that one ``dag.test()`` can put several operators through different faults in
turn (``dag.test()`` runs tasks one at a time, in dependency order). An arm task posts its rules and
configuration to the emulator's control surface at the host of the ``cerebraform_default``
connection; it never reads or logs the key.

Every task records the exception it failed with (type, MRO, message) as JSON in the folder named by
``CEREBRAFORM_FAULT_RECORD_DIR``, so the tests check what a user would read.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor
from airflow_provider_cerebraform.version_compat import BaseHook

RECORD_DIR_ENV = "CEREBRAFORM_FAULT_RECORD_DIR"
START = datetime(2024, 1, 1)
#: Prompts of the mapped runs; the tests count the emulator's submissions per prompt.
STORM_PROMPTS = ["storm: a red kite", "storm: a blue kite", "storm: a green kite"]
CREDIT_PROMPTS = ["credits: one apple", "credits: two pears", "credits: three plums", "credits: four figs"]
#: The API's failure message that must reach the task's log and its failure.
JOB_FAILURE_MESSAGE = "GPU 3 overheated while rendering frame 12 (fault test)"


def record_failure(context: Any) -> None:
    """``on_failure_callback`` and ``on_retry_callback``: record the exception a user would see, per try."""
    folder = os.environ.get(RECORD_DIR_ENV)
    if not folder:
        return
    ti = context["ti"]
    error = context.get("exception")
    record = {
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "type": type(error).__name__,
        "mro": [cls.__name__ for cls in type(error).__mro__],
        "message": str(error),
        "repr": repr(error),
    }
    name = f"{ti.dag_id}.{ti.task_id}.{ti.map_index}.{ti.try_number}.json"
    Path(folder, name).write_text(json.dumps(record))


DEFAULTS: dict[str, Any] = {
    "on_failure_callback": record_failure,
    "on_retry_callback": record_failure,
    "retries": 0,
}


@task(trigger_rule="all_done")
def arm(faults: list[dict[str, Any]], config: dict[str, Any] | None = None) -> int:
    """Replace the emulator's fault rules (and change its configuration) before the next operator."""
    from airflow_provider_cerebraform.emulator import EmulatorAdmin

    admin = EmulatorAdmin(BaseHook.get_connection("cerebraform_default").host)
    if config:
        admin.configure(**config)
    return len(admin.set_faults(*faults))


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(
        dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=kwargs.pop("default_args", DEFAULTS),
        params=kwargs.pop("params", {"output": ""}),
        **kwargs,
    )


# -- a worker killed with SIGKILL between the submit's answer and the record of its request id ----------

#: Set (to anything) in the process that runs the first try: that process kills itself right there.
KILL_AFTER_SUBMIT_ENV = "CEREBRAFORM_FAULT_KILL_AFTER_SUBMIT"
KILL_PROMPT = "killed: a moth at a lamp"


class _KilledAfterAnswerHook(CerebraformHook):
    def submit(self, *args: Any, **kwargs: Any) -> str:
        request_id = super().submit(*args, **kwargs)
        if os.environ.get(KILL_AFTER_SUBMIT_ENV):
            # The POST was answered; the record of its id is not written yet: the worker dies here.
            os.kill(os.getpid(), signal.SIGKILL)
        return request_id


class KilledAfterSubmitAnswer(CerebraformSubmitOperator):
    """A submit operator whose worker is killed (``kill -9``) right after the service answered the POST."""

    @property
    def hook(self) -> CerebraformHook:
        return _KilledAfterAnswerHook(self.cerebraform_conn_id, max_rate_limit_wait=self.max_in_process_wait)


def _killed_submit(policy: str) -> DAG:
    with _dag(f"cerebraform_fault_killed_submit_{policy}", default_args={**DEFAULTS, "retries": 1}) as dag:
        KilledAfterSubmitAnswer(task_id="submit", prompt=KILL_PROMPT, on_uncertain_submission=policy)
    return dag


killed_submit_fail = _killed_submit("fail")
killed_submit_resubmit = _killed_submit("resubmit")

# -- a remembered request the service no longer knows (404) ------------------------------------------

FORGOTTEN_PROMPT = "forgotten: a paper lantern"


class SubmitThenFailOnce(CerebraformSubmitOperator):
    """Submits (the request id is recorded), then fails its first try."""

    def execute(self, context: Any) -> Any:
        request_id = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError(f"the first try fails after submitting {request_id} (test)")
        return request_id


with _dag("cerebraform_fault_forgotten_request") as forgotten_request:
    SubmitThenFailOnce(
        task_id="submit",
        prompt=FORGOTTEN_PROMPT,
        # Templated: a Variable changes the policy for one clear, without editing the DAG.
        on_uncertain_submission="{{ var.value.get('cerebraform_on_uncertain_submission', 'fail') }}",
    )

# -- status polls: 5xx bursts and latency beyond the request timeout, in the trigger and in a sensor --

#: The first two polls answer after 1 s (the connection's timeout is 0.5 s), the next three get 503.
STATUS_FAULTS = [
    {"endpoint": "status", "latency": 1.0, "latency_next": 2},
    {"endpoint": "status", "fail_next": 5, "status": 503, "message": "status backend overloaded"},
]

with _dag("cerebraform_fault_status_polls") as status_polls:
    generate = CerebraformGenerateOperator(
        task_id="generate", prompt="status faults: a windmill", poll_interval=0.1
    )
    submit = CerebraformSubmitOperator(task_id="submit", prompt="status faults: a watermill")
    poke = CerebraformTaskSensor(
        task_id="sensor_poke", request_id=submit.output, poll_interval=0.1, timeout=60, deferrable=False
    )
    # The deferrable sensor looks once with the blocking client before it defers: that look too.
    deferred = CerebraformTaskSensor(
        task_id="sensor_deferred", request_id=submit.output, poll_interval=0.1, timeout=60
    )
    arm.override(task_id="arm_trigger")(STATUS_FAULTS) >> generate
    generate >> arm.override(task_id="arm_poke")(STATUS_FAULTS) >> submit >> poke
    poke >> arm.override(task_id="arm_deferred")(STATUS_FAULTS) >> deferred

# -- the submit POST: 5xx after commit and a read timeout; retries=1 must not pay twice -------------

SUBMIT_5XX_PROMPT = "submit faults: a 5xx after commit"
SUBMIT_TIMEOUT_PROMPT = "submit faults: a read timeout"

with _dag(
    "cerebraform_fault_submit", default_args={**DEFAULTS, "retries": 1, "retry_delay": timedelta(0)}
) as submit_faults:
    (
        arm.override(task_id="arm_5xx")(
            [{"endpoint": "submit", "fail_next": 1, "status": 503, "after_commit": True}]
        )
        >> CerebraformSubmitOperator(task_id="submit_5xx", prompt=SUBMIT_5XX_PROMPT)
        >> arm.override(task_id="arm_timeout")([{"endpoint": "submit", "latency": 1.0, "latency_next": 1}])
        >> CerebraformSubmitOperator(
            task_id="submit_timeout", prompt=SUBMIT_TIMEOUT_PROMPT, trigger_rule="all_done"
        )
    )

# -- media downloads: reset mid-body, truncated body, and a download that never succeeds ------------

with _dag("cerebraform_fault_media") as media_faults:
    reset = CerebraformGenerateOperator(
        task_id="reset_once",
        prompt="media faults: a reset download",
        output="{{ params.output }}/reset_once",
        poll_interval=0.1,
    )
    truncated = CerebraformGenerateOperator(
        task_id="truncated_once",
        prompt="media faults: a truncated download",
        output="{{ params.output }}/truncated_once",
        poll_interval=0.1,
    )
    broken = CerebraformGenerateOperator(
        task_id="always_reset",
        prompt="media faults: a download that always breaks",
        output="{{ params.output }}/always_reset",
        poll_interval=0.1,
        trigger_rule="all_done",
    )
    arm.override(task_id="arm_reset")([{"endpoint": "media", "reset_next": 1}]) >> reset
    reset >> arm.override(task_id="arm_truncate")([{"endpoint": "media", "truncate_next": 1}]) >> truncated
    truncated >> arm.override(task_id="arm_always")([{"endpoint": "media", "reset_next": 100}]) >> broken

# -- malformed answers from every endpoint ------------------------------------------------------------


def _malformed(group: str, kind: str, **rule: Any) -> list[dict[str, Any]]:
    return [{"endpoint": group, "malformed_next": 1, "malformed": kind, **rule}]


with _dag(
    "cerebraform_fault_malformed", default_args={**DEFAULTS, "retries": 1, "retry_delay": timedelta(0)}
) as malformed:
    steps = [
        (
            "submit_not_json",
            _malformed("submit", "not_json"),
            CerebraformSubmitOperator,
            {"prompt": "malformed: submit not json"},
        ),
        (
            "submit_after_commit_wrong_types",
            _malformed("submit", "wrong_types", after_commit=True),
            CerebraformSubmitOperator,
            {"prompt": "malformed: submit wrong types after commit"},
        ),
        (
            "submit_hostile_request_id",
            [{"endpoint": "submit", "malformed_next": 1, "body": '{"request_id": "../../x"}'}],
            CerebraformGenerateOperator,
            {
                "prompt": "malformed: hostile id",
                "output": "{{ params.output }}/hostile",
                "poll_interval": 0.1,
            },
        ),
        (
            "status_array_in_trigger",
            _malformed("status", "array"),
            CerebraformGenerateOperator,
            {"prompt": "malformed: status array", "poll_interval": 0.1},
        ),
        (
            "status_null_in_trigger",
            _malformed("status", "null"),
            CerebraformGenerateOperator,
            {"prompt": "malformed: status null", "poll_interval": 0.1},
        ),
        (
            "result_missing_fields",
            _malformed("result", "missing_fields"),
            CerebraformGenerateOperator,
            {"prompt": "malformed: result missing", "poll_interval": 0.1},
        ),
        (
            "result_wrong_types",
            _malformed("result", "wrong_types"),
            CerebraformGenerateOperator,
            {
                "prompt": "malformed: result wrong types",
                "output": "{{ params.output }}/rw",
                "poll_interval": 0.1,
            },
        ),
        (
            "credits_wrong_types",
            _malformed("credits", "wrong_types"),
            CerebraformSubmitOperator,
            {"prompt": "malformed: credits", "min_credits": 1},
        ),
        (
            "credits_empty",
            _malformed("credits", "empty"),
            CerebraformSubmitOperator,
            {"prompt": "malformed: credits empty", "min_credits": 1},
        ),
    ]
    previous = None
    for task_id, faults, operator, kwargs in steps:
        armed = arm.override(task_id=f"arm_{task_id}")(faults)
        target = operator(task_id=task_id, trigger_rule="all_done", **kwargs)
        if previous is not None:
            previous >> armed
        armed >> target
        previous = target
    # The sensor's own poke path (blocking client, not the trigger): a status with the wrong types.
    poked = CerebraformSubmitOperator(
        task_id="submit_for_sensor", prompt="malformed: sensor", trigger_rule="all_done"
    )
    (
        previous
        >> poked
        >> arm.override(task_id="arm_sensor_wrong_types")(_malformed("status", "wrong_types"))
        >> CerebraformTaskSensor(
            task_id="sensor_status_wrong_types", request_id=poked.output, poll_interval=0.1, timeout=30
        )
    )

# -- 429 storms on creation and polling (faults armed by the test) -----------------------------------

with _dag("cerebraform_fault_rate_limit_storm") as storm:
    CerebraformGenerateOperator.partial(task_id="generate", poll_interval=0.1, max_in_process_wait=60).expand(
        prompt=STORM_PROMPTS
    )

# -- result URLs that expire ----------------------------------------------------------------------------

with _dag("cerebraform_fault_url_expiry") as url_expiry:
    refetched = CerebraformGenerateOperator(
        task_id="expired_once",
        prompt="expiry: first url expired",
        output="{{ params.output }}/expired_once",
        poll_interval=0.1,
    )
    always = CerebraformGenerateOperator(
        task_id="always_403",
        prompt="expiry: every url refused",
        output="{{ params.output }}/always_403",
        poll_interval=0.1,
        trigger_rule="all_done",
    )
    tiny_ttl = CerebraformGenerateOperator(
        task_id="tiny_ttl",
        prompt="expiry: urls expire at once",
        output="{{ params.output }}/tiny_ttl",
        poll_interval=0.1,
        trigger_rule="all_done",
    )
    (
        arm.override(task_id="arm_once")(
            [{"endpoint": "media", "fail_next": 1, "status": 403, "message": "Request has expired"}]
        )
        >> refetched
    )
    (
        refetched
        >> arm.override(task_id="arm_always")(
            [{"endpoint": "media", "error_rate": 1.0, "status": 403, "message": "Request has expired"}]
        )
        >> always
    )
    # url_ttl is in emulated seconds: 0.001 / time-scale 40 is 25 microseconds, gone before any download.
    always >> arm.override(task_id="arm_ttl")([], {"url_ttl": 0.001}) >> tiny_ttl

# -- credits running out in the middle of a mapped run ------------------------------------------------

with _dag("cerebraform_fault_credits") as credits_run:
    CerebraformGenerateOperator.partial(
        task_id="generate", poll_interval=0.1, output="{{ params.output }}/credits"
    ).expand(prompt=CREDIT_PROMPTS)

# -- a job that fails on the service (status -1) ----------------------------------------------------

with _dag("cerebraform_fault_job_failure") as job_failure:
    CerebraformGenerateOperator(
        task_id="generate", prompt=f"a doomed render #cf-fail:{JOB_FAILURE_MESSAGE}", poll_interval=0.1
    )
    failing = CerebraformSubmitOperator(
        task_id="submit", prompt=f"a doomed still #cf-fail:{JOB_FAILURE_MESSAGE}"
    )
    CerebraformTaskSensor(
        task_id="sensor_poke", request_id=failing.output, poll_interval=0.1, timeout=30, mode="poke"
    )

# -- downloads: only http(s), size-capped, names that cannot escape the output folder -----------------


@task
def arm_hostile_result(request_id: str) -> str:
    """Serve the next result with the real media URL dressed up to look like a path escape."""
    import requests

    from airflow_provider_cerebraform.emulator import EmulatorAdmin

    conn = BaseHook.get_connection("cerebraform_default")
    session = requests.Session()
    session.trust_env = False
    answer = session.get(
        f"{conn.host}/ai/v1/to-image/result/{request_id}",
        headers={"Authorization": f"Bearer {conn.password}"},
        timeout=10,
    )
    answer.raise_for_status()
    url = answer.json()["results"][0]["url"]
    body = {"results": [{"url": f"{url}?name=../../escape/../../x", "content_type": "../../../escape"}]}
    EmulatorAdmin(conn.host).set_faults({"endpoint": "result", "malformed_next": 1, "body": json.dumps(body)})
    return url


with _dag("cerebraform_fault_downloads") as downloads:
    file_url = CerebraformGenerateOperator(
        task_id="file_url",
        prompt="downloads: file url",
        output="{{ params.output }}/file_url",
        poll_interval=0.1,
    )
    ftp_url = CerebraformGenerateOperator(
        task_id="ftp_url",
        prompt="downloads: ftp url",
        output="{{ params.output }}/ftp_url",
        poll_interval=0.1,
        trigger_rule="all_done",
    )
    too_big = CerebraformGenerateOperator(
        task_id="too_big",
        prompt="downloads: too big",
        output="{{ params.output }}/too_big",
        max_bytes=1000,
        poll_interval=0.1,
        trigger_rule="all_done",
    )
    hostile_submit = CerebraformSubmitOperator(
        task_id="hostile_submit", prompt="downloads: hostile names", trigger_rule="all_done"
    )
    hostile_wait = CerebraformTaskSensor(
        task_id="hostile_wait", request_id=hostile_submit.output, poll_interval=0.1
    )
    hostile_store = CerebraformResultOperator(
        task_id="hostile_store",
        request_id=hostile_submit.output,
        output="{{ params.output }}/hostile",
        file_name="{request_id}/{kind}-{index}{ext}",
    )
    # A fragment keeps the whole URL a file:// URL of /etc/passwd whatever path the emulator appends.
    arm.override(task_id="arm_file")([], {"public_url": "file:///etc/passwd#"}) >> file_url
    file_url >> arm.override(task_id="arm_ftp")([], {"public_url": "ftp://127.0.0.1:9"}) >> ftp_url
    ftp_url >> arm.override(task_id="arm_plain")([], {"public_url": None}) >> too_big >> hostile_submit
    hostile_submit >> hostile_wait >> arm_hostile_result(hostile_submit.output) >> hostile_store
