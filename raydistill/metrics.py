"""ROUGE and BLEU as the seq2seq distillation scripts computed them, with several references.

Follows ``calculate_rouge`` / ``calculate_bleu`` of transformers' ``examples/legacy/seq2seq/utils.py``
(F-measure x100 of rouge-score's bootstrap "mid", rounded to 4 decimals), with two deliberate
differences, both so that results are the same on every machine:

- rougeLsum needs one sentence per line. The original splits sentences with nltk's punkt model,
  which is not shipped with nltk and cannot be downloaded offline; we split after ``.``, ``!`` or
  ``?`` followed by whitespace. Only rougeLsum depends on this.
- The bootstrap draws from numpy's global RNG; we seed it (``seed=0``) and restore its state after,
  so a validation metric used to pick checkpoints does not jitter between identical runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from raydistill.errors import ConfigError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# The validation metric (higher is better) that each task reports and selects checkpoints by.
METRICS = {"summarization": "rouge2", "translation": "bleu"}

References = Sequence[str] | Sequence[Sequence[str]]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects (``<n>`` is Pegasus' newline token)."""
    text = text.replace("<n>", " ").strip()
    return "\n".join(s for s in _SENTENCE_END.split(text) if s)


def _as_multi(preds: Sequence[str], refs: References) -> list[list[str]]:
    """Refs as one list of references per prediction, checking counts."""
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} references; "
                         "pass one reference (or one list of references) per prediction")
    if not preds:
        raise ValueError("no predictions to score")
    multi = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not r for r in multi):
        raise ValueError("an example has an empty list of references; give it at least one")
    return multi


def calculate_rouge(
    preds: Sequence[str],
    refs: References,
    rouge_keys: Sequence[str] = ROUGE_KEYS,
    use_stemmer: bool = True,
    bootstrap_aggregation: bool = True,
    newline_sep: bool = True,
    seed: int | None = 0,
) -> dict[str, float]:
    """ROUGE F-measure x100 per key; with several references an example takes the best one.

    ``bootstrap_aggregation=False`` gives the plain mean over examples instead of the bootstrap
    mid. ``seed=None`` leaves numpy's global RNG alone (the original, non-deterministic behaviour).
    """
    from rouge_score import rouge_scorer, scoring, tokenizers

    multi = _as_multi(preds, refs)
    # The tokenizer rouge_score makes by default, given: without one it logs "Using default
    # tokenizer." at every validation.
    scorer = rouge_scorer.RougeScorer(list(rouge_keys), use_stemmer=use_stemmer,
                                      tokenizer=tokenizers.DefaultTokenizer(use_stemmer))
    aggregator = scoring.BootstrapAggregator()
    per_key: dict[str, list[float]] = {k: [] for k in rouge_keys}
    for pred, targets in zip(preds, multi):
        if newline_sep:
            pred, targets = split_sentences(pred), [split_sentences(t) for t in targets]
        scores = scorer.score_multi(targets, pred)  # max F-measure over references, per key
        aggregator.add_scores(scores)
        for k, s in scores.items():
            per_key[k].append(s.fmeasure)

    if not bootstrap_aggregation:
        return {k: round(float(np.mean(v)) * 100, 4) for k, v in per_key.items()}
    state = np.random.get_state()
    if seed is not None:
        np.random.seed(seed)
    try:
        result = aggregator.aggregate()
    finally:
        if seed is not None:
            np.random.set_state(state)
    return {k: round(float(v.mid.fmeasure) * 100, 4) for k, v in result.items()}


def calculate_bleu(preds: Sequence[str], refs: References) -> dict[str, float]:
    """sacrebleu corpus BLEU and chrF; examples may have different numbers of references."""
    from sacrebleu import corpus_bleu, corpus_chrf

    multi = _as_multi(preds, refs)
    # sacrebleu takes reference *streams* (stream j holds every example's j-th reference);
    # None marks "this example has fewer references" and is skipped.
    n_streams = max(len(r) for r in multi)
    streams = [[r[j] if j < len(r) else None for r in multi] for j in range(n_streams)]
    preds = list(preds)
    return {
        "bleu": round(float(corpus_bleu(preds, streams).score), 4),
        "chrf": round(float(corpus_chrf(preds, streams).score), 4),
    }


def score(task: str, preds: Sequence[str], refs: References) -> dict[str, float]:
    """All metrics of ``task`` (a key of ``METRICS``); ``METRICS[task]`` is among them."""
    if task == "summarization":
        return calculate_rouge(preds, refs)
    if task == "translation":
        return calculate_bleu(preds, refs)
    raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(METRICS)}")
