"""Ray start-up and the runtime environment every Ray-using stage shares.

A low module: ``data/``, ``models/``, ``train/``, ``eval/`` and ``tune/`` import it, it imports
nothing of raydistill, so no stage has to import a later one to start Ray. (The model-folder
checks, the other thing every stage needs before it spends a resource, are ``raydistill.hub``'s.)
"""

from __future__ import annotations

import json
import os

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
}
# Passed to the workers only when the user set them: workers load local folders (the driver
# resolves Hub ids), so offline or not is the user's choice, never ours.
PASSED_THROUGH = ("HF_HUB_OFFLINE",)


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS) when given; otherwise start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Inside `ray job submit`, the job's runtime env may set some of these already: Ray refuses
    # to merge two values for one variable, so the job's own win.
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    taken = set(((job_env.get("runtime_env") or {}).get("env_vars") or {}))
    passed = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env = {k: v for k, v in {**RAY_ENV, **passed}.items() if k not in taken}
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood logs that are not terminals."""
    import sys

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.enable_operator_progress_bars = False


__all__ = ["PASSED_THROUGH", "RAY_ENV", "init_ray", "quiet_ray_data"]
