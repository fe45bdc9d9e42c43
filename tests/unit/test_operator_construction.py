from __future__ import annotations

from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor


def test_sensor_poll_interval_sets_poke_interval_and_an_explicit_one_wins():
    assert CerebraformTaskSensor(task_id="a", request_id="r1", poll_interval=3).poke_interval == 3
    sensor = CerebraformTaskSensor(task_id="b", request_id="r1", poll_interval=3, poke_interval=7)
    assert sensor.poke_interval == 7
