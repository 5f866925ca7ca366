"""A second local Ray on the machine does not mislead a running one's workers.

Ray resolves an unset address to the cluster started last on the machine. Ray Train's
placement-group cleaner asked that cluster whether its own controller was alive, heard "no", and
removed a running training's placement group (a teacher run died at step 250 when a test session
started beside it). ``runtime.init_ray`` pins each worker's $RAY_ADDRESS to its own cluster, and,
for a local Ray without its dashboard, points the state API at an address where nothing answers
(the cleaner then heard "dead" from another Ray's dashboard on port 8265: a teacher died at step
700).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, os, subprocess, sys
import ray
from raydistill.runtime import init_ray

init_ray()
own = ray.get_runtime_context().gcs_address
other = subprocess.Popen([sys.executable, "-c",
    "import ray, time; ray.init(num_cpus=1, include_dashboard=True, dashboard_port=8265); "
    "print(ray.get_runtime_context().gcs_address, flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, text=True)
try:
    other_address = other.stdout.readline().strip()

    @ray.remote(num_cpus=0)
    class Probe:
        def resolved(self):
            from ray._private.services import canonicalize_bootstrap_address_or_die
            pinned = canonicalize_bootstrap_address_or_die(None)
            os.environ.pop("RAY_ADDRESS")  # what Ray resolves without the pin
            try:
                return pinned, canonicalize_bootstrap_address_or_die(None)
            except ConnectionError as err:  # "Found multiple active Ray instances"
                return pinned, str(err)

        def controller_alive(self):
            """What Ray Train's placement-group cleaner concludes of a live actor of this
            cluster (this one), while the other Ray's dashboard holds port 8265."""
            from ray.train.v2._internal.state.util import is_actor_alive
            from ray.util.state.exception import RayStateApiException
            me = ray.get_runtime_context().get_actor_id()
            try:
                return is_actor_alive(actor_id=me, timeout=10)
            except RayStateApiException:
                return "unknown"

    probe = Probe.remote()
    alive = ray.get(probe.controller_alive.remote(), timeout=120)  # first: resolved() unpins
    pinned, unpinned = ray.get(probe.resolved.remote(), timeout=120)
    print(json.dumps({"own": own, "other": other_address, "pinned": pinned,
                      "unpinned": unpinned, "alive": alive}))
finally:
    other.kill()
'''


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_workers_resolve_their_own_cluster_after_another_local_ray_started():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["own"] != got["other"]
    # The trap: without the pin, Ray picks the newer cluster or gives up on the choice.
    assert got["unpinned"] != got["own"], got
    assert got["pinned"] == got["own"]
    # Ray Train's placement-group cleaner removes a run's placement group when it hears "dead":
    # the answer must never come from the other cluster's dashboard.
    assert got["alive"] in (True, "unknown"), got
