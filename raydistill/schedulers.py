"""Public temperature and loss-weight schedulers (TextBrewer's); see raydistill.distill.schedulers."""

from raydistill.distill.schedulers import (
    TEMPERATURE_SCHEDULER,
    WEIGHT_SCHEDULER,
    WEIGHT_SCHEDULER_NAMES,
    build_temperature_scheduler,
    check_weight_scheduler,
    constant_temperature_scheduler,
    cwsm_temperature_scheduler_builder,
    flsw_temperature_scheduler_builder,
    linear_decay_weight_scheduler,
    linear_growth_weight_scheduler,
    normalize_temperature_spec,
    scheduled_weight,
)

__all__ = [
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "WEIGHT_SCHEDULER_NAMES",
    "build_temperature_scheduler",
    "check_weight_scheduler",
    "constant_temperature_scheduler",
    "cwsm_temperature_scheduler_builder",
    "flsw_temperature_scheduler_builder",
    "linear_decay_weight_scheduler",
    "linear_growth_weight_scheduler",
    "normalize_temperature_spec",
    "scheduled_weight",
]
