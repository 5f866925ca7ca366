"""Public distillation losses (TextBrewer's names and math); see raydistill.distill.losses."""

from raydistill.distill.losses import (
    KD_LOSS_MAP,
    MATCH_LOSS_MAP,
    PAIR_LOSSES,
    att_ce_loss,
    att_ce_mean_loss,
    att_mse_loss,
    att_mse_sum_loss,
    cos_loss,
    fsp_loss,
    hid_mse_loss,
    kd_ce_loss,
    kd_mse_loss,
    mmd_loss,
    pkd_loss,
    topk_kd_loss,
)

__all__ = [
    "KD_LOSS_MAP",
    "MATCH_LOSS_MAP",
    "PAIR_LOSSES",
    "att_ce_loss",
    "att_ce_mean_loss",
    "att_mse_loss",
    "att_mse_sum_loss",
    "cos_loss",
    "fsp_loss",
    "hid_mse_loss",
    "kd_ce_loss",
    "kd_mse_loss",
    "mmd_loss",
    "pkd_loss",
    "topk_kd_loss",
]
