"""``evaluate`` end to end on real data (SciTLDR test, several references per example)."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest

from raydistill.errors import ConfigError, ModelError
from raydistill.eval.evaluate import add_evaluate_args, evaluate, run_evaluate_cli
from raydistill.metrics import calculate_rouge

# The package re-exports the function ``evaluate``, which hides the module of the same name.
evaluate_module = importlib.import_module("raydistill.eval.evaluate")
# evaluate() imports generate_parallel from here when it runs (the CLI's parser needs no torch)
generate_module = importlib.import_module("raydistill.models.generate")
N = 16


@pytest.fixture(scope="module")
def run(ray_session, tiny_bart_dir, scitldr_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    results = evaluate(tiny_bart_dir, scitldr_dir, "test", "summarization", out, num_beams=2,
                       max_length=16, batch_size=8, num_workers=2, n=N)
    return results, out


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_evaluate_writes_files_and_scores_against_all_references(run, scitldr_dir):
    results, out = run
    gens = (out / "test_generations.txt").read_text(encoding="utf-8").split("\n")
    assert gens[-1] == "" and len(gens) == N + 1  # one line per example, newline-terminated
    assert json.loads((out / "test_results.json").read_text()) == results
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files

    assert results["n_examples"] == N
    assert results["metric"] == "rouge2" and set(results["scores"]) == {
        "rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(0.0 <= v <= 100.0 for v in results["scores"].values())
    assert results["gen_seconds"] > 0 and results["examples_per_second"] > 0
    assert results["generation"]["num_beams"] == 2

    # The references came from test.refs.jsonl (several per example), not test.target.
    refs = [json.loads(line)["references"]
            for line in (scitldr_dir / "test.refs.jsonl").read_text().splitlines()[:N]]
    assert results["references"]["file"] == "test.refs.jsonl"
    assert results["references"]["max_per_example"] == max(len(r) for r in refs) > 1
    assert results["scores"] == calculate_rouge(gens[:N], refs)


@pytest.mark.integration
def test_cli_prints_scores_and_paths(run, monkeypatch, capsys):
    results, out = run
    seen = {}

    def fake_evaluate(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return results

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    args = add_evaluate_args(argparse.ArgumentParser()).parse_args(
        ["--model", "m", "--data-dir", "d", "--num-beams", "1", "--n", "5"])
    assert run_evaluate_cli(args) == 0
    assert seen["args"] == ("m", "d", "test", "summarization", None)
    assert seen["kwargs"]["num_beams"] == 1 and seen["kwargs"]["n"] == 5
    printed = capsys.readouterr().out
    assert "rouge2" in printed and "validation metric" in printed
    assert str(out / "test_results.json") in printed


@pytest.mark.integration
def test_scores_use_every_reference(tiny_bart_dir, scitldr_dir, tmp_path, monkeypatch):
    """Predict each example's *last* reference: 100 only if all references are scored."""
    refs = [json.loads(line)["references"]
            for line in (scitldr_dir / "test.refs.jsonl").read_text().splitlines()[:N]]
    monkeypatch.setattr(generate_module, "generate_parallel",
                        lambda model_dir, sources, **kw: ([r[-1] for r in refs], 1.0))
    results = evaluate(tiny_bart_dir, scitldr_dir, out_dir=tmp_path, n=N)
    assert results["scores"] == {k: 100.0 for k in results["scores"]}
    targets = (scitldr_dir / "test.target").read_text().splitlines()[:N]
    assert calculate_rouge([r[-1] for r in refs], targets)["rouge2"] < 100.0


def test_bad_task_and_model_fail_before_ray(tmp_path, tiny_bart_dir, tiny_data_dir):
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate(tiny_bart_dir, tiny_data_dir, task="qa")
    with pytest.raises(ModelError, match="config.json"):
        evaluate(tmp_path, tiny_data_dir)
