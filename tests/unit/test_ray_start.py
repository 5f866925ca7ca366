"""How init_ray starts or joins Ray: the dashboard's UI only on request for a local Ray, and the
Train controller's poll interval (start-up, issue 19)."""

import pytest

from raydistill import runtime


@pytest.fixture
def ray_init(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime, "quiet_ray_data", lambda: None)
    monkeypatch.setattr(runtime, "_unreachable", lambda address: None)
    # init_ray records whether it joined a cluster; put the flag back for the tests after this
    monkeypatch.setattr(runtime, "_attached_flag", runtime._attached_flag)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(runtime.DASHBOARD_ENV, raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    return calls


def test_a_local_ray_starts_without_the_dashboard_ui_unless_asked(ray_init, monkeypatch):
    import os

    runtime.init_ray()
    monkeypatch.setenv(runtime.DASHBOARD_ENV, "1")
    runtime.init_ray()
    assert [c["include_dashboard"] for c in ray_init] == [False, True]
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"


def test_joining_a_cluster_leaves_its_dashboard_alone(ray_init, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # the user's value is kept
    runtime.init_ray("127.0.0.1:6379")
    (call,) = ray_init
    assert call["address"] == "127.0.0.1:6379" and "include_dashboard" not in call
    import os

    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_workers_get_the_address_pin_unless_the_job_sets_its_own_hook(ray_init, monkeypatch):
    import json

    runtime.init_ray()
    hook = ray_init[-1]["runtime_env"]["worker_process_setup_hook"]
    assert hook == "raydistill.runtime.pin_cluster_address"
    # Inside `ray job submit` with a hook of the job's own, Ray would refuse a second one.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"worker_process_setup_hook": "mine.setup"}}))
    runtime.init_ray()
    assert "worker_process_setup_hook" not in ray_init[-1]["runtime_env"]


def test_the_pin_sets_ray_address_to_the_workers_own_cluster(monkeypatch):
    import os

    import ray

    class Context:
        gcs_address = "10.0.0.7:6379"

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    runtime.pin_cluster_address()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.7:6379"
