"""cluster.yaml (AWS) and cluster.local.yaml (on-premise) parse, pass Ray's own cluster-config
schema, and keep the choices docs/cluster.md relies on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
FILES = ("cluster.yaml", "cluster.local.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def start_commands(cfg: dict) -> str:
    return "\n".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])


@pytest.mark.parametrize("name", FILES)
def test_passes_rays_cluster_schema(name):
    """What `ray up` does first: fill in the provider's defaults, then validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(name)))


def test_aws_has_a_cpu_head_and_gpu_workers_that_scale_from_zero():
    cfg = load("cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head, workers = types[cfg["head_node_type"]], types["ray.worker.gpu"]
    assert set(types) == {cfg["head_node_type"], "ray.worker.gpu"}
    assert head["resources"].get("GPU", 0) == 0
    assert workers["resources"]["GPU"] >= 1 and workers["node_config"]["InstanceType"] == "g5.xlarge"
    assert workers["min_workers"] == 0 < workers["max_workers"] <= cfg["max_workers"]
    # Terminated, not stopped: a stopped node would come back with yesterday's disk.
    assert cfg["provider"]["cache_stopped_nodes"] is False


def test_local_lists_the_machines_and_lets_ray_make_the_node_type():
    cfg = load("cluster.local.yaml")
    assert cfg["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] and len(cfg["provider"]["worker_ips"]) >= 1
    assert "available_node_types" not in cfg  # `ray up` refuses them for the local provider
    assert cfg["min_workers"] == cfg["max_workers"] == len(cfg["provider"]["worker_ips"])


@pytest.mark.parametrize("name", FILES)
def test_dashboard_stays_on_the_head_loopback(name):
    cfg = load(name)
    text = (REPO / name).read_text()
    commands = start_commands(cfg)
    assert "--dashboard-host=127.0.0.1" in commands
    assert "0.0.0.0" not in commands and not re.search(r"dashboard-host[= ](?!127\.0\.0\.1)", commands)
    # No security-group rule opens the dashboard/job API (8265) or the GCS (6379).
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    assert not any(r.get("FromPort", 0) <= port <= r.get("ToPort", -1)
                   for r in rules for port in (6379, 8265))
    assert "ray dashboard " + name in text  # how to reach it is written down


@pytest.mark.parametrize("name", FILES)
def test_same_pinned_setup_everywhere(name):
    cfg = load(name)
    setup = "\n".join(cfg["setup_commands"])
    assert re.search(r"pip install .*torch==\d+\.\d+\.\d+", setup)  # pinned, before raydistill
    assert setup.index("torch==") < setup.index("/home/ray/raydistill")
    assert cfg["file_mounts"] == {"/home/ray/raydistill": "."} and ".gitignore" in cfg["rsync_filter"]
    # The image's Ray is the one the client (and these tests) run: jobs need matching versions.
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
