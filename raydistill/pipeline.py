"""``raydistill distill``, the whole job: train (``raydistill.train``) -> test (``raydistill.eval``).

It sits above the pipeline's folders, as the CLI does, because it is the one function that
spans two of them: training must not import evaluation (``eval/`` comes after ``train/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydistill.config import DistillConfig
from raydistill.atomic import write_json_atomic, write_text_atomic
from raydistill.train.run import run_training


def run_distill(cfg: DistillConfig, *, overwrite: bool = False, resume: bool = False,
                address: str | None = None) -> dict[str, Any]:
    """Run the whole job; returns the summary written to ``metrics.json``.

    Training as ``raydistill.train.run.run_training`` does it, then, with ``do_predict``,
    best_tfmr scored on the test split (``summary["test"]``, ``test_results.txt``).
    """
    if cfg.stages:  # a staged recipe: the test scores the last stage's student
        from raydistill.stage_plan import plan_stages
        from raydistill.stages import run_stages

        summary = run_stages(cfg, overwrite=overwrite, resume=resume, address=address)
        last = plan_stages(cfg)[-1].cfg  # its generation settings, the base's data and test
        cfg, out = (last.replace(data_dir=cfg.data_dir, do_predict=cfg.do_predict),
                    Path(cfg.output_dir).resolve())
    else:
        cfg, out, summary = run_training(cfg, overwrite=overwrite, resume=resume,
                                         address=address)
    if cfg.do_predict:
        summary["test"] = run_test(cfg, out)
        write_json_atomic(out / "metrics.json", summary)
    return summary


def run_test(cfg: DistillConfig, out: Path) -> dict[str, Any]:
    """Score best_tfmr on the test split with ``evaluate`` (parallel generation); with
    ``use_gpu`` the ``num_eval_workers`` actors share the cluster's GPUs (``actor_gpus``)."""
    from raydistill.eval.evaluate import evaluate
    from raydistill.train.device import actor_gpus

    results = evaluate(str(out / "best_tfmr"), cfg.data_dir, split="test", task=cfg.task,
                       out_dir=str(out), num_beams=cfg.eval_beams,
                       length_penalty=cfg.length_penalty,
                       max_length=cfg.eval_max_gen_length or cfg.test_max_target_length,
                       max_source_length=cfg.max_source_length, batch_size=cfg.eval_batch_size,
                       num_workers=cfg.num_eval_workers,
                       num_gpus=actor_gpus(cfg.use_gpu, cfg.num_eval_workers),
                       n=cfg.n_test, backend=cfg.generation_backend,
                       compute_type=cfg.compute_type, ct2_cache_dir=cfg.ct2_cache_dir)
    flat = {**results["scores"], "n_examples": results["n_examples"],
            "gen_seconds": results["gen_seconds"]}
    lines = [f"{k}: {v}" for k, v in flat.items()]
    write_text_atomic(out / "test_results.txt", "\n".join(lines) + "\n")
    return results


__all__ = ["run_distill", "run_test"]
