from __future__ import annotations

from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor


def test_sensor_poll_interval_sets_poke_interval_and_an_explicit_one_wins():
    assert CerebraformTaskSensor(task_id="a", request_id="r1", poll_interval=3).poke_interval == 3
    sensor = CerebraformTaskSensor(task_id="b", request_id="r1", poll_interval=3, poke_interval=7)
    assert sensor.poke_interval == 7


def test_the_uncertain_submission_policy_is_kept_as_its_plain_value_for_rendering():
    """A template field is rendered with str(): an Enum member would become its qualified name."""
    from airflow_provider_cerebraform.models import UncertainSubmissionPolicy
    from airflow_provider_cerebraform.operators.cerebraform import CerebraformSubmitOperator

    assert CerebraformSubmitOperator(task_id="a", prompt="p").on_uncertain_submission == "fail"
    chosen = CerebraformSubmitOperator(
        task_id="b", prompt="p", on_uncertain_submission=UncertainSubmissionPolicy.RESUBMIT
    )
    assert type(chosen.on_uncertain_submission) is str and chosen.on_uncertain_submission == "resubmit"
