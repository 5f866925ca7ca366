"""The public API is importable from the top-level package, as the README shows."""

import raydistill


def test_public_names_are_exported():
    for name in ("DistillConfig", "run_distill", "make_student", "LAYERS_TO_COPY",
                 "get_layers_to_supervise", "evaluate", "calculate_rouge", "calculate_bleu",
                 "DistillationConfig", "TrainingConfig", "token_budget_batches"):
        assert name in raydistill.__all__ and getattr(raydistill, name) is not None
    assert callable(raydistill.evaluate) and raydistill.LAYERS_TO_COPY[12][3] == [0, 6, 11]
