"""Ray Train's placement-group cleaner asks this cluster's GCS whether the run's controller lives
(runtime.pin_cluster_address installs the check in every worker): it needs no dashboard, so it
neither warns every second on a local Ray without one nor misses a dead controller."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def test_the_hook_gives_the_cleaners_module_the_gcs_check():
    code = ("import sys; from raydistill import runtime; "
            "sys.meta_path.insert(0, runtime._CleanerAsksGcs()); "
            f"import {runtime_module()} as m; "
            "assert m.is_actor_alive is runtime.actor_alive_in_gcs, m.is_actor_alive; "
            "assert not any(isinstance(f, runtime._CleanerAsksGcs) for f in sys.meta_path); "
            "import json; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def runtime_module() -> str:
    from raydistill.runtime import CLEANER_MODULE

    return CLEANER_MODULE


@pytest.mark.timeout(180)
def test_a_dead_controllers_placement_group_is_removed_without_a_dashboard(ray_session):
    """The cleaner as Ray Train starts it (a detached actor on this session's Ray, whose workers
    run the setup hook), watching a stand-in controller: alive, the placement group stays and
    the GCS says so; killed, the cleaner removes the group."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from raydistill.runtime import actor_alive_in_gcs

    @ray.remote(num_cpus=0)
    class Controller:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    @ray.remote(num_cpus=0)
    def cleaner_sees_gcs_check() -> bool:
        import importlib

        from raydistill.runtime import CLEANER_MODULE, actor_alive_in_gcs

        return importlib.import_module(CLEANER_MODULE).is_actor_alive is actor_alive_in_gcs

    controller = Controller.remote()
    controller_id = ray.get(controller.actor_id.remote(), timeout=60)
    assert actor_alive_in_gcs(controller_id)
    assert actor_alive_in_gcs("ff" * 16)  # unknown to this GCS: never a reason to clean up
    assert ray.get(cleaner_sees_gcs_check.remote(), timeout=60)

    from ray.train.v2._internal.execution.controller.placement_group_cleaner import (
        PlacementGroupCleaner,
    )

    pg = placement_group([{"CPU": 0.01}])
    ray.get(pg.ready(), timeout=60)
    cleaner = ray.remote(num_cpus=0)(PlacementGroupCleaner).options(lifetime="detached").remote(
        controller_actor_id=controller_id, check_interval_s=0.5, get_actor_timeout_s=5,
        stop_timeout=5.0)
    try:
        ray.get(cleaner.register_placement_group.remote(pg), timeout=60)
        ray.get(cleaner.start_monitoring.remote(), timeout=60)
        time.sleep(2)
        assert placement_group_table(pg)["state"] != "REMOVED"  # the controller lives
        ray.kill(controller)
        deadline = time.time() + 60
        while placement_group_table(pg)["state"] != "REMOVED" and time.time() < deadline:
            time.sleep(0.5)
        assert placement_group_table(pg)["state"] == "REMOVED"
        assert not actor_alive_in_gcs(controller_id)
    finally:
        ray.kill(cleaner, no_restart=True)
