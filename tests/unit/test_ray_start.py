"""How init_ray starts or joins Ray (the dashboard's UI only on request for a local Ray, the
Train controller's poll interval) and the clocks start-up is read with (issue 19)."""

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
    monkeypatch.setattr(runtime, "_started_local", runtime._started_local)
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


def test_actor_pools_restart_their_actors_only_on_a_ray_this_process_did_not_start(ray_init):
    """A local Ray's pools run without restarts (Ray 2.60 prints an error line for every
    restartable pool actor); a joined cluster's keep Ray Data's restarts (a node may be lost)."""
    runtime._started_local = False
    assert runtime.actor_restarts() == {}  # nothing started here (a trial, a worker)
    runtime.init_ray()
    assert runtime.actor_restarts() == {"max_restarts": 0}
    runtime.init_ray("127.0.0.1:6379")
    assert runtime.actor_restarts() == {}


def test_pool_map_batches_passes_the_restarts_where_map_batches_takes_them(monkeypatch):
    """Ray 2.60's map_batches takes max_restarts as a deprecated extra keyword (its warning
    silenced); a map_batches without extra keywords is called without it."""
    import warnings

    class Extra:
        def map_batches(self, fn, **kwargs):
            warnings.warn("`ray_remote_args` is deprecated and will be removed in Ray 2.64.",
                          DeprecationWarning, stacklevel=2)
            return fn, kwargs

    class Named:
        def map_batches(self, fn, batch_size=None):
            return fn, {"batch_size": batch_size}

    monkeypatch.setattr(runtime, "_started_local", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation must not escape
        assert runtime.pool_map_batches(Extra(), "f", batch_size=4) == (
            "f", {"batch_size": 4, "max_restarts": 0})
    assert runtime.pool_map_batches(Named(), "f", batch_size=4) == ("f", {"batch_size": 4})
    monkeypatch.setattr(runtime, "_started_local", False)
    assert runtime.pool_map_batches(Extra(), "f") == ("f", {})


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


def test_work_runs_beside_ray_start_and_ray_stays_on_the_main_thread(ray_init, monkeypatch):
    import threading

    import ray

    started = threading.Event()
    where = {}

    def fake_init(**kw):
        where["ray"] = threading.current_thread() is threading.main_thread()
        started.set()

    def work():
        where["work"] = threading.current_thread() is threading.main_thread()
        # Side by side: Ray's start is seen while the work is still running.
        return started.wait(timeout=10)

    monkeypatch.setattr(ray, "init", fake_init)
    assert runtime.init_ray_during(work) is True
    assert where == {"ray": True, "work": False}


def test_an_error_of_the_work_shuts_the_ray_down_and_is_raised(ray_init, monkeypatch):
    import ray

    from raydistill.errors import ModelError

    shutdowns = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))

    def work():
        raise ModelError("teacher: no tokenizer found")

    with pytest.raises(ModelError, match="no tokenizer"):
        runtime.init_ray_during(work)
    assert len(ray_init) == 1 and shutdowns == [1]


def test_a_ray_error_waits_for_the_work_and_is_raised(ray_init, monkeypatch):
    import time

    import ray

    from raydistill.errors import ConfigError

    done = []

    def refuse(**kw):
        raise ConnectionError("nothing there")

    def work():
        time.sleep(0.2)
        done.append(1)  # e.g. the student is written completely, never half

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        runtime.init_ray_during(work, "auto")
    assert done == [1]


def test_joining_a_cluster_runs_the_work_first_in_this_thread(ray_init, monkeypatch):
    """Inside `ray job submit`, joining re-creates the driver's current folder: nothing runs
    beside it."""
    import threading

    import ray

    order = []
    monkeypatch.setattr(ray, "init", lambda **kw: order.append("ray"))
    value = runtime.init_ray_during(
        lambda: order.append(threading.current_thread() is threading.main_thread()) or 7, "auto")
    assert value == 7 and order == [True, "ray"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    runtime.init_ray_during(lambda: order.append("work"))
    assert order[-2:] == ["work", "ray"]


def test_with_ray_running_the_work_runs_in_this_thread(monkeypatch):
    import threading

    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    main = runtime.init_ray_during(lambda: threading.current_thread() is threading.main_thread())
    assert main is True


def test_start_up_counts_from_the_launch_once_then_from_each_call(monkeypatch):
    """A command's first run counts its imports; a notebook's second run counts from its call."""
    monkeypatch.setattr(runtime, "_RUNS_STARTED", 0)
    monkeypatch.setattr(runtime, "launch_time", lambda: 100.0)
    assert runtime.run_start(130.0) == (100.0, "launch")
    assert runtime.run_start(250.0) == (250.0, "the call")


def test_a_process_start_is_read_from_the_kernel_to_a_clock_tick(tmp_path):
    """A child's own start lies between the parent's clock before and after starting it."""
    import subprocess
    import sys
    import time

    before = time.time()
    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3); from "
                          "raydistill.runtime import process_start_time; "
                          "print(repr(process_start_time()))"],
                         capture_output=True, text=True, check=True).stdout
    after = time.time()
    started = float(out)
    tick = 0.02  # /proc counts in clock ticks (1/100 s)
    assert before - tick <= started <= after
    assert started < after - 0.3  # its start, not the time of the call (0.3 s later)


def test_a_train_workers_first_step_line_says_when_its_process_and_loop_started():
    from types import SimpleNamespace

    from raydistill.train.loop import first_step_line

    run = {"launch_time": 1000.0, "launched_by": "launch"}
    worker = SimpleNamespace(run=run, process_started=1023.4, setup_seconds=1.0, started=1035.4)
    assert first_step_line(worker, 1036.1) == (
        "[raydistill] first optimizer step 36.1 s after launch (this worker: process started "
        "at 23.4 s, loop started at 34.4 s, 1.0 s setup, 0.7 s to the step)")
    in_process = SimpleNamespace(run={**run, "launched_by": "the call"}, process_started=None,
                                 setup_seconds=1.1, started=1011.1)
    assert first_step_line(in_process, 1011.5) == (
        "[raydistill] first optimizer step 11.5 s after the call (this worker: 1.1 s setup, "
        "0.4 s to the step)")
