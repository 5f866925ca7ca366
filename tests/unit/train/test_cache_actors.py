"""How many teacher actors build a logit cache: every worker-sized slot free before training."""

import pytest

from raydistill.config import DistillConfig


@pytest.mark.parametrize("free, use_gpu, cpus, workers, expected", [
    ({"CPU": 2.0}, False, 1, 1, 2),  # a 1-worker run builds its cache on both cores
    ({"CPU": 16.0, "GPU": 8.0}, True, 4, 1, 8),  # one teacher per free GPU
    ({"CPU": 7.0}, False, 2, 1, 3),  # whole worker-sized slots only
    ({"CPU": 0.0}, False, 1, 2, 2),  # never fewer than num_workers (they wait for CPUs)
])
def test_cache_build_uses_every_free_slot(monkeypatch, tmp_path, free, use_gpu, cpus, workers,
                                          expected):
    import ray

    from raydistill.train.run import cache_actors

    monkeypatch.setattr(ray, "available_resources", lambda: free)
    cfg = DistillConfig(method="kd", teacher="t", data_dir=str(tmp_path), output_dir=str(tmp_path),
                        use_gpu=use_gpu, cpus_per_worker=cpus, num_workers=workers)
    assert cache_actors(cfg) == expected
