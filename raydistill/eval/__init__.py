"""Evaluation: `evaluate` (generation on a Ray actor pool, then ROUGE / BLEU); the generation
and metric functions re-exported here live in raydistill.models.generate and raydistill.metrics."""

from raydistill.eval.evaluate import add_evaluate_args, evaluate, run_evaluate_cli
from raydistill.models.generate import Generator, generate_local, generate_parallel
from raydistill.metrics import METRICS, calculate_bleu, calculate_rouge, score

__all__ = [
    "METRICS",
    "Generator",
    "add_evaluate_args",
    "calculate_bleu",
    "calculate_rouge",
    "evaluate",
    "generate_local",
    "generate_parallel",
    "run_evaluate_cli",
    "score",
]
