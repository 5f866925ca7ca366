"""The metric wrappers against direct rouge-score and sacrebleu calls."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer, scoring

from raydistill.errors import ConfigError
from raydistill.metrics import (
    METRICS, ROUGE_KEYS, calculate_bleu, calculate_rouge, score, split_sentences,
)

PREDS = [
    "the cat sat on the mat. it was happy.",
    "a dog ran in the park with a ball.",
    "birds sing when the sun rises.",
]
REFS = [
    "the cat was sitting on the mat. the cat was happy.",
    "a dog runs in a park.",
    "in the morning the birds sing.",
]
MULTI = [
    [REFS[0], "a happy cat sat on a mat."],
    [REFS[1]],
    [REFS[2], "birds sing at sunrise.", "when the sun rises, birds sing."],
]


def _direct_rouge(preds, multi_refs, newline=True):
    """rouge-score used directly: score_multi, bootstrap mid F x100 with numpy seeded like ours."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    agg = scoring.BootstrapAggregator()
    for p, refs in zip(preds, multi_refs):
        if newline:
            p, refs = split_sentences(p), [split_sentences(r) for r in refs]
        agg.add_scores(scorer.score_multi(refs, p))
    np.random.seed(0)
    return {k: round(v.mid.fmeasure * 100, 4) for k, v in agg.aggregate().items()}


def test_rouge_matches_rouge_score_single_reference():
    assert calculate_rouge(PREDS, REFS) == _direct_rouge(PREDS, [[r] for r in REFS])


def test_rouge_multi_reference_is_max_over_references():
    ours = calculate_rouge(PREDS, MULTI)
    assert ours == _direct_rouge(PREDS, MULTI)
    single = calculate_rouge(PREDS, REFS)
    assert all(ours[k] >= single[k] for k in ROUGE_KEYS)
    assert ours["rouge2"] > single["rouge2"]


def test_rouge_perfect_match_is_100_and_keys_are_floats():
    result = calculate_rouge(REFS, [[r, "unrelated words"] for r in REFS])
    assert result == {k: 100.0 for k in ROUGE_KEYS}
    assert all(type(v) is float for v in result.values())


def test_rougelsum_uses_sentence_newlines():
    # Sentence order swapped: rougeL (one LCS over the text) drops, rougeLsum (per sentence) not.
    pred = ["the cat sat on the mat. the dog ran in the park."]
    ref = ["the dog ran in the park. the cat sat on the mat."]
    with_nl = calculate_rouge(pred, ref)
    without = calculate_rouge(pred, ref, newline_sep=False)
    assert with_nl["rougeLsum"] == 100.0
    assert with_nl["rougeL"] < 100.0
    assert without["rougeLsum"] == without["rougeL"]  # no newlines: one "sentence"
    assert split_sentences("One. Two!  Three? four<n>five") == "One.\nTwo!\nThree?\nfour five"


def test_rouge_seed_makes_it_deterministic_and_restores_numpy_rng():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = calculate_rouge(PREDS, REFS)
    assert np.random.rand() == expected_next  # global RNG state untouched
    assert calculate_rouge(PREDS, REFS) == a


def test_rouge_without_bootstrap_is_plain_mean():
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    mean = np.mean([scorer.score(r, p)["rouge1"].fmeasure for p, r in zip(PREDS, REFS)])
    got = calculate_rouge(PREDS, REFS, rouge_keys=("rouge1",), bootstrap_aggregation=False)
    assert got == {"rouge1": round(float(mean) * 100, 4)}


def test_bleu_matches_sacrebleu_single_reference():
    got = calculate_bleu(PREDS, REFS)
    assert got == {
        "bleu": round(sacrebleu.corpus_bleu(PREDS, [REFS]).score, 4),
        "chrf": round(sacrebleu.corpus_chrf(PREDS, [REFS]).score, 4),
    }


def test_bleu_unequal_reference_counts():
    # Streams padded with None (skipped by sacrebleu) == giving each example exactly its refs.
    streams = [[m[0] for m in MULTI], [MULTI[0][1], None, MULTI[2][1]], [None, None, MULTI[2][2]]]
    got = calculate_bleu(PREDS, MULTI)
    assert got["bleu"] == round(sacrebleu.corpus_bleu(PREDS, streams).score, 4)
    assert got["chrf"] == round(sacrebleu.corpus_chrf(PREDS, streams).score, 4)
    assert got["bleu"] > calculate_bleu(PREDS, REFS)["bleu"]
    assert calculate_bleu(REFS, MULTI) == {"bleu": 100.0, "chrf": 100.0}


def test_score_dispatches_by_task():
    assert METRICS["summarization"] in score("summarization", PREDS, REFS)
    assert set(score("translation", PREDS, REFS)) == {"bleu", "chrf"}
    with pytest.raises(ConfigError, match="unknown task"):
        score("qa", PREDS, REFS)


@pytest.mark.parametrize("fn", [calculate_rouge, calculate_bleu])
def test_bad_inputs_explain_themselves(fn):
    with pytest.raises(ValueError, match="2 references"):
        fn(PREDS, REFS[:2])
    with pytest.raises(ValueError, match="no predictions"):
        fn([], [])
    with pytest.raises(ValueError, match="empty list of references"):
        fn(PREDS[:1], [[]])


def test_rouge_logs_nothing_at_each_validation(caplog):
    """rouge_score logs "Using default tokenizer." whenever it makes its own: given, it is quiet."""
    import logging

    from raydistill.metrics import score

    with caplog.at_level(logging.DEBUG):
        score("summarization", ["a cat sat"], ["a cat sat on"])
    assert "default tokenizer" not in caplog.text
