"""``stages:``: each stage's config from the base and its overrides, validated at construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydistill.config import DistillConfig
from raydistill.errors import ConfigError
from raydistill.stage_plan import Stage, plan_stages
from raydistill.stages import START_GAP_WARNING, stage_summary

BASE = {"method": "sft", "teacher": "t", "student_decoder_layers": 3, "data_dir": "d",
        "output_dir": "/runs/recipe", "learning_rate": 3e-4, "max_steps": 100,
        "distillation": None, "task": "translation"}


def staged(stages, **kw) -> DistillConfig:
    return DistillConfig.from_dict({**BASE, **kw, "stages": stages})


def test_each_stage_is_the_base_with_its_overrides_and_starts_from_the_last_best_student():
    cfg = staged([{"max_steps": 200},
                  {"method": "gkd", "name": "onpolicy", "learning_rate": 5e-5,
                   "gkd": {"lmbda": 1.0, "beta": 0.1}},
                  {"method": "kd", "temperature": 4.0, "alpha_hid": 1.0}])
    s0, s1, s2 = plan_stages(cfg)
    assert [s.name for s in (s0, s1, s2)] == ["stage0_sft", "stage1_onpolicy", "stage2_kd"]
    assert s0.dir == Path("/runs/recipe/stage0_sft")
    assert s0.cfg.output_dir == "/runs/recipe/stage0_sft" and s0.cfg.max_steps == 200
    # stage 0 builds the student as the base says; later ones start from the last best_tfmr
    assert s0.cfg.student is None and s0.cfg.student_decoder_layers == 3
    assert s1.cfg.student == "/runs/recipe/stage0_sft/best_tfmr"
    assert s2.cfg.student == "/runs/recipe/stage1_onpolicy/best_tfmr"
    assert s1.cfg.student_decoder_layers is None and s2.cfg.student_encoder_layers is None
    # overrides apply to their stage only; the rest is the base's
    assert s1.cfg.learning_rate == 5e-5 and s2.cfg.learning_rate == 3e-4
    assert s1.cfg.max_steps == 100 and s2.cfg.temperature == 4.0 and s1.cfg.temperature == 2.0
    assert s1.cfg.gkd_settings.beta == 0.1 and s2.cfg.gkd is None
    # the test split is scored once, at the end, on the last stage's student
    assert not any(s.cfg.do_predict for s in (s0, s1, s2)) and cfg.do_predict
    assert all(s.cfg.stages is None for s in (s0, s1, s2))


def test_nested_sections_merge_key_by_key():
    tb = {"temperature": 2, "kd_loss_type": "ce", "hard_label_weight": 1.0}
    cfg = staged([{"method": "kd", "distillation": {"temperature": 8}}], distillation=None,
                 method="kd")
    assert plan_stages(cfg)[0].cfg.distillation == {"temperature": 8}
    cfg = staged([{"max_steps": 5}, {"distillation": {"temperature": 8}}], method="kd",
                 distillation=tb)
    assert plan_stages(cfg)[1].cfg.distillation == {**tb, "temperature": 8}


def test_a_gkd_section_on_the_base_does_not_fail_its_other_stages():
    cfg = staged([{"method": "sft"}, {"max_steps": 50}], method="gkd",
                 gkd={"lmbda": 0.5, "beta": 0.5})
    s0, s1 = plan_stages(cfg)
    assert s0.cfg.method == "sft" and s0.cfg.gkd is None
    assert s1.cfg.method == "gkd" and s1.cfg.gkd == {"lmbda": 0.5, "beta": 0.5}


def test_run_name_and_storage_follow_the_stage():
    s0, s1 = plan_stages(staged([{}, {"method": "kd"}], run_name="exp"))
    assert (s0.cfg.run_name, s1.cfg.run_name) == ("exp_stage0_sft", "exp_stage1_kd")
    assert plan_stages(staged([{}]))[0].cfg.run_name is None  # the stage folder's name


@pytest.mark.parametrize("stages, message", [
    ([], "stages: must be a non-empty list"),
    ("sft", "wrong type"),
    ([{"max_steps": 10}, "kd"], "stages[1]: expected a mapping"),
    ([{"output_dir": "x"}], "stages[0]: output_dir cannot change between stages"),
    ([{}, {"student_decoder_layers": 1}],
     "stages[1]: student_decoder_layers cannot change between stages"),
    ([{}, {"student": "other"}], "stages[1]: student cannot change"),
    ([{}, {"method": "distil"}], "stages[1]: method='distil' is not allowed"),
    ([{}, {"learning_rat": 1e-4}], "stages[1]: unknown config key 'learning_rat'"),
    ([{"gkd": {"lmbda": 2}, "method": "gkd"}], "stages[0]: gkd.lmbda=2"),
    ([{"name": "a/b"}], "stages[0]: name='a/b' must be letters"),
])
def test_a_bad_stage_is_one_line_naming_the_stage_and_key(stages, message):
    with pytest.raises(ConfigError) as err:
        staged(stages)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_stage_that_starts_far_below_the_teacher_warns(capsys):
    cfg = plan_stages(staged([{}]))[0].cfg
    stage = Stage(0, "stage0_sft", Path("/r/stage0_sft"), cfg)
    summary = {"val": [{"bleu": 3.0, "step": 10}, {"bleu": 9.0, "step": 20}],
               "best": {"bleu": 9.0}, "final_step": 20, "train_seconds": 1.5}
    line = stage_summary(stage, summary, teacher_val=3.0 + START_GAP_WARNING + 0.5)
    assert line["first_val"] == 3.0 and line["start_gap"] == pytest.approx(10.5)
    assert line["best"] == 9.0 and line["final_step"] == 20
    assert "started 10.5 bleu points below the teacher" in capsys.readouterr().out
    stage_summary(stage, summary, teacher_val=3.0 + START_GAP_WARNING)  # at the limit: quiet
    assert capsys.readouterr().out == ""
    assert stage_summary(stage, summary, teacher_val=None)["start_gap"] is None


@pytest.mark.parametrize("name", ["recipe_translation.yaml", "recipe_summarization.yaml"])
def test_the_shipped_recipes_fine_tune_first_then_use_the_teacher(name):
    from raydistill.config import load_config

    cfg, _ = load_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / name)
    first, second = plan_stages(cfg)
    assert first.cfg.method == "sft" and first.cfg.student_decoder_layers == 3
    assert second.cfg.method in ("kd", "gkd") and second.cfg.uses_teacher
    assert second.cfg.student == str(first.dir / "best_tfmr")
