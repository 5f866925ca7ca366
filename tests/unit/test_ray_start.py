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
