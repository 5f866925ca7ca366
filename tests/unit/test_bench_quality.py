"""bench/quality.py: staged rows of one depth and seed train their shared first stage once."""

from __future__ import annotations

import json
from pathlib import Path


def staged(second: str, out: Path, lr: float = 5e-4) -> dict:
    return {"method": "sft", "learning_rate": lr, "seed": 0, "output_dir": str(out),
            "stages": [{"name": "sft", "max_steps": 30}, {"method": second, "max_steps": 10}]}


def table_rows(q, tmp_path: Path, *methods: str) -> tuple[dict, list[dict]]:
    """The CPU table's settings and the 6-3 first-seed configs of ``methods``."""
    import argparse

    args = argparse.Namespace(task="translation", quick=False, device="cpu", threads=2,
                              data_dir=None, fresh=False, seeds=3)
    s = q.translation_settings(args)
    return s, [q.student_config(args, s, m, 3, s["seed"], tmp_path / "teacher",
                                tmp_path / "data", tmp_path / "pl", tmp_path) for m in methods]


def finish_first_stage(row: Path, reuse, seconds: float) -> None:
    """What the first row's run leaves: its key (written by reuse) and a finished stage 0."""
    row.mkdir(parents=True)
    assert reuse(row) is False  # nothing to copy yet: this row trains its first stage
    stage = row / "stage0_sft"
    (stage / "best_tfmr").mkdir(parents=True)
    (stage / "best_tfmr" / "model.safetensors").write_bytes(b"weights")
    (stage / "stage_done.json").write_text(json.dumps(
        {"summary": {"train_seconds": seconds}, "layers": None}))
    (row / "teacher_val.json").write_text('{"score": 21.0}')


def test_a_staged_row_copies_the_finished_first_stage_of_the_same_settings(tmp_path, bench_module):
    q = bench_module("quality")
    first, later = tmp_path / "student_6_3_sft_kd", tmp_path / "student_6_3_sft_pl"
    finish_first_stage(first, q.first_stage_reuse(staged("kd", first), tmp_path, "t1"), 312.5)
    later.mkdir()
    cfg = staged("pl", later)
    assert q.first_stage_reuse(cfg, tmp_path, "t1")(later) is True
    assert (later / "stage0_sft" / "best_tfmr" / "model.safetensors").read_bytes() == b"weights"
    assert (later / q.SHARED_SECONDS).read_text() == "312.5"  # its time counts in this row
    assert json.loads((later / "hparams.json").read_text()) == {"stages": cfg["stages"]}
    assert (later / "teacher_val.json").is_file()


def test_a_first_stage_of_other_settings_or_another_teacher_is_not_copied(tmp_path, bench_module):
    q = bench_module("quality")
    first = tmp_path / "student_6_3_sft_kd"
    finish_first_stage(first, q.first_stage_reuse(staged("kd", first), tmp_path, "t1"), 10.0)
    for n, (cfg_of, teacher) in enumerate([(lambda o: staged("pl", o, lr=1e-4), "t1"),
                                           (lambda o: staged("pl", o), "t2")]):
        row = tmp_path / f"student_6_3_other{n}"
        row.mkdir()
        assert q.first_stage_reuse(cfg_of(row), tmp_path, teacher)(row) is False
        assert not (row / "stage0_sft").exists() and not (row / q.SHARED_SECONDS).exists()


def test_a_rows_clocks_count_every_stage_and_are_absent_for_older_runs(tmp_path, bench_module):
    q = bench_module("quality")

    def write(folder: Path, val: list[dict], final: int, wall: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(
            {"val": val, "final_step": final, "train_seconds": wall}))

    one = tmp_path / "one"  # resumed once: its last call's wall time (15 s) is not its clock
    write(one, [{"step": 5, "bleu": 1.0, "elapsed_s": 10.0, "cpu_s": 18.0},
                {"step": 10, "bleu": 2.0, "elapsed_s": 21.5, "cpu_s": 40.0}], 10, 15.0)
    assert q.training_seconds(one, "bleu") == 21.5 and q.training_cpu_seconds(one) == 40.0

    staged = tmp_path / "staged"
    write(staged / "stage0_sft", [{"step": 30, "bleu": 3.0, "elapsed_s": 30.0, "cpu_s": 55.0}],
          30, 50.0)
    write(staged / "stage1_kd", [{"step": 10, "bleu": 4.0, "elapsed_s": 12.0, "cpu_s": 20.0}],
          10, 40.0)
    (staged / "metrics.json").write_text(json.dumps({
        "stages": [{"name": "stage0_sft", "dir": str(staged / "stage0_sft"), "final_step": 30,
                    "train_seconds": 50.0},
                   {"name": "stage1_kd", "dir": str(staged / "stage1_kd"), "final_step": 10,
                    "train_seconds": 40.0}],
        "val": [{"step": 10, "bleu": 4.0, "elapsed_s": 12.0, "cpu_s": 20.0}]}))
    assert q.training_seconds(staged, "bleu") == 42.0
    assert q.training_cpu_seconds(staged) == 75.0

    old = tmp_path / "old"  # validations without the clocks: None, the caller's wall time then
    write(old, [{"step": 10, "bleu": 2.0}], 10, 15.0)
    assert q.training_seconds(old, "bleu") is None and q.training_cpu_seconds(old) is None


def test_the_equal_time_sft_follows_each_runs_fastest_interval_not_the_load(tmp_path, bench_module):
    q = bench_module("quality")

    def row(name: str, clocks: list[tuple[int, float]] | None, wall: float,
            stage: str | None = None) -> dict:
        out = tmp_path / name
        (out / "best_tfmr").mkdir(parents=True, exist_ok=True)
        folder = out / stage if stage else out
        folder.mkdir(exist_ok=True)
        val = [{"step": n, "bleu": 1.0, **({"elapsed_s": t} if clocks else {})}
               for n, t in (clocks or [(10, 0.0)])]
        (folder / "metrics.json").write_text(json.dumps({"val": val, "final_step": val[-1]["step"]}))
        return {"dir": str(out / "best_tfmr"), "train_seconds": wall}

    # sft: 2,000 steps; its first 1,500 under load (1,000 s), the last 500 alone (100 s):
    # 0.2 s a step on a quiet machine, 400 s in all, not its own clock's 1,100.
    sft = row("sft", [(500, 400.0), (1000, 700.0), (1500, 1000.0), (2000, 1100.0)], 1100.0)
    assert q.quiet_seconds(Path(sft["dir"]).parent) == 400.0
    # a staged gkd row: stage 0 as sft (0.2 s a step: 300 s), stage 1 500 steps at 1.0-1.4 s
    gkd = row("gkd", [(1500, 300.0)], 900.0, stage="stage0_sft")
    row("gkd", [(250, 250.0), (500, 600.0)], 900.0, stage="stage1_gkd")
    assert q.quiet_seconds(Path(gkd["dir"]).parent) == 800.0
    # the plot's curve on that clock: each stage at its own fastest rate, one after the other
    assert q.quiet_curve(Path(sft["dir"]).parent, "bleu") == [
        (100.0, 500, 1.0), (200.0, 1000, 1.0), (300.0, 1500, 1.0), (400.0, 2000, 1.0)]
    assert q.quiet_curve(Path(gkd["dir"]).parent, "bleu") == [
        (300.0, 1500, 1.0), (550.0, 1750, 1.0), (800.0, 2000, 1.0)]
    assert q.equal_time_steps(2000, sft, [gkd]) == 4000  # 800 / 400 of sft's 2,000 steps
    # a run without the loop's clock: every run by its wall clock
    assert q.equal_time_steps(2000, sft, [gkd, row("old", None, 2200.0)]) == 4000  # 2,200 / 1,100
    # never fewer steps than the sft row itself
    assert q.equal_time_steps(2000, sft, [row("fast", [(500, 50.0)], 50.0)]) == 2000


def test_the_report_prints_the_issues_targets_and_the_best_students_outputs(tmp_path, capsys,
                                                                            bench_module):
    """report() end to end on made-up rows: the table (with the quiet clock), the teacher's
    and the best students' outputs beside the references, each target, and the equal-time
    comparison against the sft seeds' spread."""
    import argparse

    q = bench_module("quality")
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.source").write_text("".join(f"source {i}\n" for i in range(6)))
    (data / "test.target").write_text("".join(f"reference {i}\n" for i in range(6)))

    def model(name: str, method: str, depth: int, bleu: float, speedup: float,
              seed: int = 0, **extra) -> tuple[str, dict]:
        out = tmp_path / name.replace(" ", "_")
        (out / "test_eval").mkdir(parents=True)
        (out / "test_eval" / "test_generations.txt").write_text(
            "".join(f"{method} output {i}\n" for i in range(6)))
        (out / "metrics.json").write_text(json.dumps({"val": [
            {"step": 10, "bleu": bleu, "elapsed_s": 20.0, "cpu_s": 30.0},
            {"step": 20, "bleu": bleu, "elapsed_s": 30.0, "cpu_s": 50.0}]}))
        return name, {"dir": str(out / "best_tfmr"), "train_seconds": 30.0, "method": method,
                      "depth": depth, "seed": seed, "parameters": 1e6, "speedup": speedup,
                      "scores": {"bleu": bleu, "chrf": 2 * bleu}, "ms_per_example": 10.0,
                      "examples_per_s": 5.0, "throughput_speedup": speedup,
                      "mean_gen_words": 3.0, **extra}

    models = dict([
        model("teacher 6-6 (sft)", "sft", 6, 20.0, 1.0, n_test=6),
        model("student 6-3 (sft)", "sft", 3, 18.0, 1.5),
        model("student 6-3 (sft) seed 1", "sft", 3, 18.5, 1.5, seed=1),
        model("student 6-3 (pl)", "pl", 3, 19.6, 1.5),
        model("student 6-3 (sft, equal time)", "sft_equal_time", 3, 18.9, 1.5, steps=40),
        model("student 6-1 (sft)", "sft", 1, 12.0, 2.0),
        model("student 6-1 (sft) seed 1", "sft", 1, 12.1, 2.0, seed=1),
        model("student 6-1 (pl) seed 1", "pl", 1, 15.3, 2.0, seed=1),
        model("student 6-1 (pl)", "pl", 1, 15.5, 2.0),
        model("student 6-1 (sft, equal time)", "sft_equal_time", 1, 15.3, 2.0, steps=40),
        # the convergence check: more steps than any row, never the best of an equal budget
        model("student 6-3 (sft, the teacher's 400 steps)", "sft_long", 3, 19.9, 1.5, steps=400),
    ])
    written = {}
    q.write_result = lambda name, result: written.update(result)
    args = argparse.Namespace(task="translation", quick=False, device="cpu", ct2_latency=None,
                              threads=2)
    s = {"num_beams": 4, "gen_max_length": 32, "latency_n": 8, "throughput_n": 32,
         "latency_rounds": 3, "d_model": 128, "vocab_size": 8000, "layers": 6}
    q.report(args, s, data, "en_de", models, 10.0, None, 100.0)
    out = capsys.readouterr().out
    assert "quiet s" in out and "train CPU s" in out
    assert "  reference: reference 0\n  teacher: sft output 0" in out
    assert "student 6-3 (pl), its first test outputs:" in out
    assert "  source: source 0\n  reference: reference 0\n  student: pl output 0" in out
    assert "target: the best 6-3 student >= 97% of the teacher's score: met" in out  # 19.6 / 20
    assert ("target: the best 6-1 student >= 75% of the teacher's score at >= 1.8x its batch-1 "
            "speed: met") in out  # 15.5 / 20 = 77.5%, 2.0x
    # equal time, each depth against its own sft seeds' spread: 6-3 pl +0.70 beyond 0.50;
    # 6-1 pl +0.20 beyond 0.10 (inside 6-3's 0.50)
    assert ("target: at equal time, 6-3: student 6-3 (pl) +0.70 bleu against sft trained as long "
            "(40 steps): met (against the 6-3 sft seed spread (0.50))") in out
    assert ("target: at equal time, 6-1: student 6-1 (pl) +0.20 bleu against sft trained as long "
            "(40 steps): met (against the 6-1 sft seed spread (0.10))") in out
    assert [r["beats"] for r in written["equal_time"]] == [True, True]
    # the seeds by depth; 6-1 pl's mean (15.40) against sft's (12.05), beyond both spreads
    assert "6-1 sft over 2 seeds: 12.00, 12.10 (mean 12.05, spread 0.10)" in out
    assert ("6-1 pl, mean of 2 seeds: +3.35 bleu against sft's mean: beats sft by more than both "
            "seed spreads (0.20, 0.10)") in out
    assert set(written["seeds"]) == {"6-3 sft", "6-1 sft", "6-1 pl"}
    assert ("student 6-3 (pl): +1.60 bleu against sft at 6-3, 1.0x its train time: beats sft by "
            "more than the 6-3 sft seed spread (0.50)") in out
    assert ("convergence check: student 6-3 (sft, the teacher's 400 steps): bleu 19.90 against "
            "the teacher's 20.00 (-0.10): does not pass it") in out
    assert written["best"]["6-3"]["best"] == "student 6-3 (pl)"
    # the decoder's arithmetic per generated token beside the measured speed-up (issue 28):
    # 128 x 8,000 for the output layer + 14 x 128^2 per layer, six layers against three, one
    macs = {n: 128 * 8000 + 14 * 128 * 128 * n for n in (6, 3, 1)}
    assert abs(written["best"]["6-3"]["decoder_arithmetic_ratio"] - macs[6] / macs[3]) < 1e-12
    assert abs(written["best"]["6-1"]["decoder_arithmetic_ratio"] - macs[6] / macs[1]) < 1e-12
    assert "at 1.50x batch-1 speed; the teacher's decoder does 1.40x its multiply-adds" in out
    assert written["target_met"] is True


def test_the_trimmed_row_keeps_half_the_vocabulary_its_bpe_was_trained_on(tmp_path, bench_module):
    """The table's BPE is trained on its own train split, which then uses every token: trimmed
    to that split alone the student kept all 8,000 ids and trained exactly as sft. The row
    keeps the most frequent half (keep_vocab)."""
    q = bench_module("quality")
    s, (cfg, mild, sft) = table_rows(q, tmp_path, "sft_trim", "sft_trim_mild", "sft")
    assert mild["keep_vocab"] == 6000 and mild["output_dir"] != cfg["output_dir"]
    assert cfg["keep_vocab"] == s["vocab_size"] // 2 == 4000
    assert cfg["trim_vocab"] == str(tmp_path / "data")
    assert {k: v for k, v in cfg.items() if k not in ("keep_vocab", "trim_vocab", "output_dir")} \
        == {k: v for k, v in sft.items() if k != "output_dir"}  # otherwise the sft row's run


def test_rows_of_one_layer_students_key_on_the_last_layer_rule(bench_module):
    """make_student's one-layer side changed from the teacher's first layer to its last: rows
    made the old way must not be reused; every other row keeps its key (nothing retrains)."""
    import hashlib

    q = bench_module("quality")

    def old(cfg: dict, after: str) -> str:
        return hashlib.sha256((json.dumps(cfg, sort_keys=True) + after).encode()).hexdigest()[:16]

    six_three = {"method": "sft", "student_encoder_layers": None, "student_decoder_layers": 3}
    six_one = {**six_three, "student_decoder_layers": 1}
    assert q._digest(six_three, "t") == old(six_three, "t")
    assert q._digest(six_one, "t") != old(six_one, "t")
    given = {**six_one, "student": "/a/student"}  # a student made elsewhere: its own layers
    assert q._digest(given, "t") == old(given, "t")


def test_a_staged_rows_second_stage_runs_at_the_recipes_lower_rate(tmp_path, bench_module):
    """sft for three quarters of the steps at the students' rate, then the teacher's stage at a
    fifth of it without warm-up, as jobs/configs/recipe_translation.yaml (5e-4, then 1e-4); the
    same total steps as the one-stage rows."""
    q = bench_module("quality")
    s, (cfg,) = table_rows(q, tmp_path, "sft_gkd_l0.5_b0.9")
    first, then = cfg["stages"]
    assert cfg["learning_rate"] == s["student_lr"] == 5e-4 and "learning_rate" not in first
    assert then["learning_rate"] == 1e-4 and then["warmup_steps"] == 0
    assert first["max_steps"] + then["max_steps"] == s["student_steps"]
    assert then["gkd"]["lmbda"] == 0.5 and then["gkd"]["beta"] == 0.9
