"""Sweeps: Ray Tune over distillation settings, trials as Ray Train runs, a Pareto report."""

from raydistill.tune.report import (
    best_row,
    pareto_front,
    pareto_plot,
    results_csv,
    results_markdown,
    summarize_trial,
    write_report,
)
from raydistill.tune.space import (
    Dimension,
    TuneSettings,
    load_sweep,
    param_space,
    parse_tune_section,
    trial_config,
)
from raydistill.tune.sweep import run_sweep, trial_driver

__all__ = [
    "Dimension",
    "TuneSettings",
    "best_row",
    "load_sweep",
    "param_space",
    "pareto_front",
    "pareto_plot",
    "parse_tune_section",
    "results_csv",
    "results_markdown",
    "run_sweep",
    "summarize_trial",
    "trial_config",
    "trial_driver",
    "write_report",
]
