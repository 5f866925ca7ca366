"""Staged recipes: ``stages:`` in a distill config, each stage a whole run from the last one's student.

DistillBART's advice (sft first, then kd or pl) and every on-policy recipe (the GKD paper's
students are fine-tuned before gkd) are stages that users chain by hand elsewhere. Here a
config lists them::

    method: sft               # the base: data, teacher, student depth, shared optimisation
    teacher: facebook/bart-large-xsum
    student_decoder_layers: 3
    stages:
      - {max_steps: 2000, learning_rate: 3e-4}                     # stage 0: the base's method
      - {method: gkd, max_steps: 300, learning_rate: 5e-5,
         gkd: {lmbda: 1.0, beta: 0.5}}

Stage ``i`` is the base config with its overrides; stage 0 builds the student as the base says
(``make_student`` or ``student:``), every later stage starts from the previous stage's
``best_tfmr``. The stages share ``output_dir``, each in a folder of its own::

    output_dir/hparams.json        the config as given (its ``stages`` list) + the stage folders
    output_dir/stage0_sft/         a whole distill run (best_tfmr/, metrics.json, ray_results/...)
    output_dir/stage1_gkd/
    output_dir/best_tfmr/          the last stage's best student
    output_dir/metrics.json        every stage's summary, the teacher's val score, the test split

``--resume`` skips the finished stages and resumes the one that stopped from its checkpoint.
It sits above ``train/`` and ``eval/``, as ``pipeline`` does: a stage never reaches into the
worker loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raydistill.atomic import write_json_atomic
from raydistill.config import DistillConfig
from raydistill.errors import ConfigError
from raydistill.stage_plan import Stage, plan_stages

TEACHER_VAL_FILE = "teacher_val.json"
# The seq2seq README's sanity check: a student that starts this far below its teacher on val
# (BLEU or ROUGE-2 points) more likely has a bug (generation or truncation settings) than a
# method problem.
START_GAP_WARNING = 10.0


def run_stages(cfg: DistillConfig, *, overwrite: bool = False, resume: bool = False,
               address: str | None = None) -> dict[str, Any]:
    """Train every stage in order (finished ones skipped on ``--resume``), then export the last
    stage's best student to ``output_dir/best_tfmr``. Returns the summary written to
    ``metrics.json`` (without the test split: ``pipeline.run_distill`` adds it)."""
    from raydistill.train.chain import export_best, train_chain

    stages = plan_stages(cfg)
    out = Path(cfg.output_dir).resolve()
    check_stages_before_ray(cfg, stages, out, overwrite=overwrite, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "hparams.json", {**cfg.to_dict(),
                                             "stage_dirs": [s.name for s in stages]})
    summaries: list[dict[str, Any]] = []

    def check(stage: Stage, record: dict[str, Any]) -> None:  # after each stage, at once
        summaries.append(stage_summary(stage, record["summary"], teacher_val_score(cfg, out)))

    records = train_chain(stages, resume=resume, overwrite=overwrite, address=address,
                          after=check)
    export_best(stages[-1].dir / "best_tfmr", out / "best_tfmr")
    metric = cfg.val_metric
    summary = {"stages": summaries, "best": {metric: summaries[-1]["best"]},
               "val": records[-1]["summary"]["val"], "teacher_val": teacher_val_score(cfg, out),
               "train_seconds": round(sum(s["train_seconds"] for s in summaries), 2),
               "final_step": sum(s["final_step"] for s in summaries)}
    write_json_atomic(out / "metrics.json", summary)
    return summary


def check_stages_before_ray(cfg: DistillConfig, stages: list[Stage], out: Path, *,
                            overwrite: bool, resume: bool) -> None:
    """What a later stage would only find out after the stages before it trained: its data
    folder and its teachers. (Stage 0's own run checks the rest before its Ray starts.)"""
    from raydistill.data.files import validate_data_dir
    from raydistill.hub import resolve_model
    from raydistill.runtime import check_output_dir

    check_output_dir(out, overwrite=overwrite, resume=resume)
    if resume:
        before = json.loads((out / "hparams.json").read_text()).get("stages")
        if before != cfg.stages:
            raise ConfigError(f"--resume: {out} was run with other stages ({before}); resume it "
                              "with the same stages:, or pass --overwrite to start over")
    for stage in stages:
        validate_data_dir(stage.cfg.data_dir, ("train", "val"))
        for teacher in stage.cfg.teacher_paths if stage.index else ():
            resolve_model(teacher, f"{stage.name}: teacher", stage.cfg.model_cache_dir)


def teacher_val_score(cfg: DistillConfig, out: Path) -> float | None:
    """The teacher's val score with the validation's settings (the first n_val pairs, the
    stage's beams and lengths), once per run (``teacher_val.json``); None without a teacher."""
    if not cfg.teacher_paths or len(cfg.teacher_paths) > 1:
        return None
    path = out / TEACHER_VAL_FILE
    if path.is_file():
        return json.loads(path.read_text())["score"]
    from raydistill.eval.evaluate import evaluate
    from raydistill.hub import resolve_model

    teacher = resolve_model(cfg.teacher_paths[0], "teacher", cfg.model_cache_dir).path
    results = evaluate(teacher, cfg.data_dir, split="val", task=cfg.task, num_beams=cfg.eval_beams,
                       length_penalty=cfg.length_penalty,
                       max_length=cfg.eval_max_gen_length or cfg.val_max_target_length,
                       max_source_length=cfg.max_source_length, batch_size=cfg.eval_batch_size,
                       num_workers=cfg.num_eval_workers, n=cfg.n_val,
                       model_cache_dir=cfg.model_cache_dir)
    score = float(results["scores"][cfg.val_metric])
    write_json_atomic(path, {"score": score, "metric": cfg.val_metric, "n": results["n_examples"]})
    return score


def stage_summary(stage: Stage, summary: dict[str, Any], teacher_val: float | None) -> dict:
    """A stage's line in ``metrics.json``; warns when its student starts more than
    START_GAP_WARNING points below the teacher on val (its first validation)."""
    metric = stage.cfg.val_metric
    first = summary["val"][0][metric] if summary.get("val") else None
    gap = None
    if teacher_val is not None and first is not None:
        gap = teacher_val - first
        if gap > START_GAP_WARNING:
            print(f"[raydistill] warning: {stage.name} started {gap:.1f} {metric} points below "
                  f"the teacher on val ({first:.2f} against {teacher_val:.2f}); more than "
                  f"{START_GAP_WARNING:.0f} is likelier a bug than a method problem: look at the "
                  "generation and truncation settings (val_max_target_length, "
                  "max_source_length, eval_beams) before trying another method", flush=True)
    return {"name": stage.name, "method": stage.cfg.method, "dir": str(stage.dir),
            "best": summary["best"][metric], "first_val": first, "start_gap": gap,
            "final_step": summary["final_step"], "train_seconds": summary["train_seconds"]}


__all__ = ["run_stages", "teacher_val_score"]
