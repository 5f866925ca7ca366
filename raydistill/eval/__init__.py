"""Evaluation: `evaluate` (generation on a Ray actor pool, then ROUGE / BLEU); the generation
and metric functions re-exported here live in raydistill.models.generate and raydistill.metrics.
The generation names import on first use (raydistill.lazy): the CLI builds its parser from this
package without importing torch."""

from raydistill.eval.evaluate import add_evaluate_args, evaluate, run_evaluate_cli
from raydistill.lazy import lazy_exports
from raydistill.metrics import METRICS, calculate_bleu, calculate_rouge, score

_EXPORTS = {
    "Generator": "raydistill.models.generate",
    "generate_local": "raydistill.models.generate",
    "generate_parallel": "raydistill.models.generate",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "METRICS", "add_evaluate_args", "calculate_bleu", "calculate_rouge",
                  "evaluate", "run_evaluate_cli", "score"])
