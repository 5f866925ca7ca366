"""raydistill: distill large seq2seq transformers into small, fast students on Ray.

The names below import on first use (raydistill.lazy): ``import raydistill`` itself is cheap.
"""

__version__ = "0.1.0"

from raydistill.lazy import lazy_exports  # noqa: E402

_EXPORTS = {
    "DistillConfig": "raydistill.config",
    "load_config": "raydistill.config",
    "run_distill": "raydistill.pipeline",
    "make_student": "raydistill.models.student",
    "LAYERS_TO_COPY": "raydistill.models.student",
    "LAYERS_TO_SUPERVISE": "raydistill.models.student",
    "get_layers_to_supervise": "raydistill.models.student",
    "evaluate": "raydistill.eval.evaluate",
    "calculate_rouge": "raydistill.metrics",
    "calculate_bleu": "raydistill.metrics",
    "DistillationConfig": "raydistill.distill.textbrewer",
    "TrainingConfig": "raydistill.distill.textbrewer",
    "token_budget_batches": "raydistill.data.batching",
    "resolve_model": "raydistill.hub",
    "ResolvedModel": "raydistill.hub",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_EXPORTS]
