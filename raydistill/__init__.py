"""raydistill: distill large seq2seq transformers into small, fast students on Ray."""

__version__ = "0.1.0"

from raydistill.config import DistillConfig, load_config  # noqa: E402
from raydistill.data.batching import token_budget_batches  # noqa: E402
from raydistill.distill.textbrewer import DistillationConfig, TrainingConfig  # noqa: E402
from raydistill.eval.evaluate import evaluate  # noqa: E402
from raydistill.metrics import calculate_bleu, calculate_rouge  # noqa: E402
from raydistill.hub import ResolvedModel, resolve_model  # noqa: E402
from raydistill.models.student import (  # noqa: E402
    LAYERS_TO_COPY,
    LAYERS_TO_SUPERVISE,
    get_layers_to_supervise,
    make_student,
)
from raydistill.pipeline import run_distill  # noqa: E402

__all__ = [
    "__version__",
    "DistillConfig",
    "load_config",
    "run_distill",
    "make_student",
    "LAYERS_TO_COPY",
    "LAYERS_TO_SUPERVISE",
    "get_layers_to_supervise",
    "evaluate",
    "calculate_rouge",
    "calculate_bleu",
    "DistillationConfig",
    "TrainingConfig",
    "token_budget_batches",
    "resolve_model",
    "ResolvedModel",
]
