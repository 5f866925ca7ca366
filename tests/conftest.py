"""Shared fixtures: one Ray session per test run, tiny tokenizers/models, the real data folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before ray/transformers import: quiet, offline, deterministic.
for _k, _v in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "offline",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_k, _v)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_CORPUS = [
    "the cat sat on the mat and looked at the dog .",
    "a dog ran in the park with a red ball .",
    "birds sing in the morning when the sun rises .",
    "the quick brown fox jumps over the lazy dog .",
    "summaries are short texts that keep the main point .",
    "translation maps a sentence from one language to another .",
] * 5


def _ray_import_error() -> str | None:
    """None when Ray imports here, else why not (one line)."""
    try:
        import ray  # noqa: F401
    except Exception as err:  # noqa: BLE001 (a broken pack raises ImportError or OSError)
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return None


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA (GPU tests run only on a machine with one)")
    no_ray = None  # checked once, when a test needs Ray (tests/gpu on the device machine)
    for item in items:
        # The marker itself: "gpu" in item.keywords is also true of every test under tests/gpu/
        # (a folder's name is a keyword), whose CPU variants must run.
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if item.get_closest_marker("needs_ray") is not None:
            no_ray = no_ray if no_ray is not None else (_ray_import_error() or "")
            if no_ray:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs Ray, which does not import here ({no_ray}); on the device "
                    "machine carry the pack of bench/device_pack.py (docs/gpu.md)"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (ray.init costs 5-7 s; each new one costs again)."""
    import ray

    if not ray.is_initialized():
        # The dashboard (job submission) starts when ray[default] is installed, as in CI.
        # The setup hook keeps this session's workers on this cluster when a test starts another
        # local Ray (runtime.pin_cluster_address).
        ray.init(num_cpus=2, log_to_driver=True,
                 runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
                              "worker_process_setup_hook":
                                  "raydistill.runtime.pin_cluster_address"})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from raydistill.models.scratch import train_tokenizer

    return train_tokenizer(TINY_CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny 4-4 BART teacher saved with its tokenizer (safetensors)."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer

    torch.manual_seed(0)
    model = new_model("bart", len(tiny_tokenizer), encoder_layers=4, decoder_layers=4,
                      pad_token_id=tiny_tokenizer.pad_token_id)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_bart"))


HUB_ID = "org/tiny-bart"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def hub_snapshot(tmp_path_factory, tiny_bart_dir):
    """A Hugging Face Hub cache on disk, in the layout huggingface_hub reads, holding HUB_ID
    (the tiny BART of ``tiny_bart_dir`` and its tokenizer) at HUB_COMMIT:
    ``models--org--tiny-bart/refs/main`` names the commit; ``snapshots/<commit>/`` holds the
    files. Returns the snapshot folder; the cache is its parents[2]."""
    import shutil

    repo = tmp_path_factory.mktemp("hub") / "models--org--tiny-bart"
    snapshot = repo / "snapshots" / HUB_COMMIT
    shutil.copytree(tiny_bart_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)  # read as is: no newline
    return snapshot


@pytest.fixture
def hub_cache(hub_snapshot, monkeypatch):
    """HF_HUB_CACHE pointed at ``hub_snapshot``'s cache, offline: ``org/tiny-bart`` resolves
    from disk and nothing touches the network. (huggingface_hub reads both variables when it
    is imported; raydistill.hub reads them at each call, so setting them here takes effect.)"""
    cache = hub_snapshot.parents[2]
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="session")
def bench_module():
    """Loads a ``bench/`` script by name as a module (its siblings, ``common`` and ``curves``,
    importable while it loads)."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str):
        sys.path.insert(0, str(bench))
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        finally:
            sys.path.remove(str(bench))

    return load


@pytest.fixture
def tiny_data_dir(tmp_path):
    """A six-file data folder of tiny examples (copied texts, short targets)."""
    lines = TINY_CORPUS[:6]
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        (tmp_path / f"{split}.source").write_text("\n".join(lines[:n]) + "\n")
        (tmp_path / f"{split}.target").write_text("\n".join(s.split(" ")[1] + " ." for s in lines[:n]) + "\n")
    return tmp_path


@pytest.fixture(scope="session")
def scitldr_dir():
    path = SHARED_DATA / "scitldr"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (../shared/data is beside the repo in CI)")
    return path


@pytest.fixture(scope="session")
def enro_dir():
    path = SHARED_DATA / "tatoeba_en_ro"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (../shared/data is beside the repo in CI)")
    return path
