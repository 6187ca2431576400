"""An ensemble of k Bradley-Terry reward models from different seeds (Coste et al. 2023).

Members differ in the head's initialisation and the order of the data. Their normalised
scores are combined by ``aggregation``: ``mean``; ``min`` (worst-case optimisation, WCO);
or ``mean_minus_std``, mean - lam * std over members (uncertainty-weighted optimisation, UWO).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_bench.core import distributed
from rlhf_bench.errors import require, require_choice
from rlhf_bench.rewards.bradley_terry import (
    BradleyTerryConfig,
    bradley_terry_loss,
    check_strength,
    fit_reward_model,
    load_pairs,
    model_spec,
    pair_accuracy,
)
from rlhf_bench.rewards.reward import AGGREGATIONS, load_reward, write_spec
from rlhf_bench.run import Run


@dataclass
class EnsembleConfig(BradleyTerryConfig):
    _target_: str = "rlhf_bench.rewards.ensemble.train"
    name: str = "ensemble"
    members: int = 3
    aggregation: str = "mean"  # mean | min | mean_minus_std
    lam: float = 1.0  # the weight of the std in mean_minus_std

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.members >= 2, "reward_model.members", "must be >= 2", self.members)
        require_choice(self.aggregation, AGGREGATIONS, "reward_model.aggregation")


def train(
    ctx: Run, cfg: EnsembleConfig, pairs_dir: Path, out_dir: Path, checkpoints: Path | None = None
) -> dict[str, float]:
    train_pairs, eval_pairs = load_pairs(ctx, pairs_dir)
    specs, member_info = [], []
    for k in range(cfg.members):
        folder = out_dir / f"member{k}"
        info = fit_reward_model(
            ctx,
            cfg,
            train_pairs,
            eval_pairs,
            folder,
            lambda c, r, _: bradley_terry_loss(c, r),
            cfg.seed + k,
            label=f"reward_model_{k}",
            checkpoints=checkpoints / folder.name if checkpoints is not None else None,
        )
        specs.append(model_spec(info, folder.name))
        member_info.append(info)
    write_spec(out_dir, {"kind": "ensemble", "aggregation": cfg.aggregation, "lam": cfg.lam, "members": specs})
    if not distributed.is_main():  # it trained along; the main process alone saved the members and scores them
        return {}
    with distributed.whole_models():
        info = pair_accuracy(ctx, load_reward(ctx, out_dir), eval_pairs, 4 * cfg.batch_size)
    info["member_accuracy"] = [m["accuracy"] for m in member_info]
    info["member_gold_accuracy"] = [m["gold_accuracy"] for m in member_info]
    check_strength(cfg, info)
    return info
