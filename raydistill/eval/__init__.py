"""Evaluation: batched generation (in-process or on a Ray actor pool) and ROUGE / BLEU metrics."""

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
