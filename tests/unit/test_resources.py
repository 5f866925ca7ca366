"""Resource checks: an impossible request is a one-line error with the numbers and the fix; on an
attached cluster it is waited for (saying so), then given up on. No Ray cluster is started: the
cluster's answers are faked."""

from __future__ import annotations

import pytest

from raydistill import runtime
from raydistill.errors import ConfigError


@pytest.fixture
def cluster(monkeypatch):
    """A fake cluster: set ``state["nodes"]`` to a list of {"CPU": n, "GPU": m} dicts."""
    import ray

    state = {"nodes": [{"CPU": 2.0}], "calls": 0}

    def totals():
        state["calls"] += 1
        out: dict[str, float] = {}
        for node in state["nodes"]:
            for k, v in node.items():
                out[k] = out.get(k, 0.0) + v
        return out

    monkeypatch.setattr(ray, "cluster_resources", totals)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": n}
                                               for n in state["nodes"]])
    return state


def test_a_request_a_local_ray_cannot_meet_fails_at_once_with_the_numbers(cluster):
    with pytest.raises(ConfigError) as err:
        runtime.check_resources("distill", 4, per_unit_cpus=2, fix="use fewer workers",
                                attached=False)
    msg = str(err.value)
    assert msg == "distill needs 4 CPUs but the Ray cluster has 2; use fewer workers"
    runtime.check_resources("distill", 2, per_unit_cpus=2, fix="x", attached=False)  # fits


def test_gpus_and_the_largest_node_count(cluster):
    with pytest.raises(ConfigError, match="needs 1 GPUs but the Ray cluster has 0; set use_gpu"):
        runtime.check_resources("distill", 1, 1, per_unit_gpus=1, fix="set use_gpu: false",
                                attached=False)
    cluster["nodes"] = [{"CPU": 2.0}, {"CPU": 2.0}]
    with pytest.raises(ConfigError, match="3 CPUs on one node but the largest node has 2"):
        runtime.check_resources("a tune trial", 3, per_unit_cpus=3, fix="x", attached=False)


def test_an_attached_cluster_is_waited_for_out_loud_then_given_up(cluster, capsys):
    with pytest.raises(ConfigError, match=r"needs 8 CPUs but the Ray cluster has 2 after "
                                          r"waiting \d+ s; fewer"):
        runtime.check_resources("distill", 8, fix="fewer", attached=True, timeout_s=0.3,
                                poll_s=0.1)
    out = capsys.readouterr().out.splitlines()
    assert "may still add nodes: waiting up to 0 s" in out[0]
    assert any("still waiting for 8 CPUs" in line for line in out[1:])


def test_an_attached_cluster_that_grows_in_time_passes(cluster, capsys):
    import ray

    grow = ray.cluster_resources

    def later():
        if cluster["calls"] >= 2:
            cluster["nodes"] = [{"CPU": 2.0}, {"CPU": 8.0}]
        return grow()

    ray.cluster_resources = later
    try:
        runtime.check_resources("distill", 8, per_unit_cpus=8, fix="x", attached=True,
                                timeout_s=5, poll_s=0.05)
    finally:
        ray.cluster_resources = grow
    assert "waiting up to 5 s" in capsys.readouterr().out


def test_an_actor_pool_names_its_knob(cluster):
    with pytest.raises(ConfigError, match=r"generation needs 3 CPUs but the Ray cluster has 2; "
                                          r"use fewer actors \(num_workers=3 now\)"):
        runtime.check_actor_pool("generation", 3, 1.0, 0.0)


def test_an_address_where_nothing_listens_is_named_at_once():
    assert runtime._unreachable("127.0.0.1:9") == "Connection refused"
    assert runtime._unreachable("auto") is None
    assert runtime._unreachable("ray://127.0.0.1:9") == "Connection refused"


def test_an_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir .*a_file/out cannot be written \(Not a "
                                          r"directory\); choose a folder you can write to"):
        runtime.check_writable(blocker / "out", "output_dir")
    runtime.check_writable(tmp_path / "fine", "output_dir")
    assert list((tmp_path / "fine").iterdir()) == []  # the probe file is gone


def test_progress_prints_a_line_every_so_often_and_at_the_end(capsys, monkeypatch):
    import time

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    p = runtime.Progress("pseudo-label", 100, every_s=10)
    for _ in range(9):  # 9 batches of 10 over 45 s: lines at 10 s, 20 s, ...
        clock[0] += 5
        p.add(10)
    clock[0] += 5
    p.add(10)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[raydistill] pseudo-label: 20/100 examples, 2.0 ex/s, ETA 40 s"
    assert lines[-1] == "[raydistill] pseudo-label: 100/100 examples, 2.0 ex/s, 50 s"
    assert len(lines) == 5  # every 10 s; the last one is also the end


@pytest.mark.parametrize("argv", [
    ["evaluate", "--model", "m", "--data-dir", "d"],
    ["pseudo-label", "--teacher", "t", "--data-dir", "d", "--out", "o"],
    ["cache-logits", "--teacher", "t", "--data-dir", "d", "--out", "o"],
])
def test_every_ray_stage_joins_the_address_it_is_given(monkeypatch, argv):
    """--address on the actor-pool stages (as on distill and tune): the stage's Ray joins it."""
    import os
    import sys

    import raydistill.eval.evaluate  # noqa: F401 (the package re-exports the function's name)
    from raydistill.cli import main
    from raydistill.models import pseudo_label, teacher_cache

    seen = []

    def stage(*args, **kw):  # where the stage would start or join Ray
        seen.append(os.environ.get("RAY_ADDRESS"))
        raise ConfigError("stop here")

    module, name = {"evaluate": (sys.modules["raydistill.eval.evaluate"], "evaluate"),
                    "pseudo-label": (pseudo_label, "pseudo_label"),
                    "cache-logits": (teacher_cache, "cache_logits")}[argv[0]]
    monkeypatch.setattr(module, name, stage)
    # --address sets $RAY_ADDRESS for the rest of the process: recorded by setenv, so that it
    # is undone after this test (a bare delenv of an unset variable records nothing to undo,
    # and later tests then tried to join gpu-head)
    monkeypatch.setenv("RAY_ADDRESS", "unset-after-this-test")
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(argv + ["--address", "ray://gpu-head:10001", "--num-gpus", "0.5"]) == 2
    assert seen == ["ray://gpu-head:10001"]


def test_the_address_test_leaves_no_address_behind():
    """Runs after the parametrized test above (pytest keeps file order)."""
    import os

    assert os.environ.get("RAY_ADDRESS") != "ray://gpu-head:10001"
