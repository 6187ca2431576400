"""Bradley-Terry with a preference-strength margin (Touvron et al. 2023, Llama 2, eq. 2).

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - m(strength))
The annotator states how strongly it prefers (0 "negligibly better" .. 3 "significantly
better"); ``margins`` maps each level to m. The default is Llama 2's "margin small" row
(Table 27): 0, 1/3, 2/3, 1 for negligibly, slightly, better, significantly better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf_bench.errors import require
from rlhf_bench.rewards.bradley_terry import (
    BradleyTerryConfig,
    check_strength,
    fit_reward_model,
    load_pairs,
    model_spec,
)
from rlhf_bench.rewards.reward import write_spec
from rlhf_bench.run import Run


@dataclass
class MarginConfig(BradleyTerryConfig):
    _target_: str = "rlhf_bench.rewards.margin.train"
    name: str = "margin"
    margins: list[float] = field(default_factory=lambda: [0.0, 1 / 3, 2 / 3, 1.0])

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.margins) == 4, "reward_model.margins", "must list 4 values (strength 0..3)", self.margins)


def margin_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[N], [N], [N] -> scalar mean of -log sigmoid(r_chosen - r_rejected - margin)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margins).mean()


def train(
    ctx: Run, cfg: MarginConfig, pairs_dir: Path, out_dir: Path, checkpoints: Path | None = None
) -> dict[str, float]:
    train_pairs, eval_pairs = load_pairs(ctx, pairs_dir)
    # margins given with the data win; else the margin of the stated preference strength
    margins = train_pairs.margin
    if margins is None:
        margins = torch.tensor(cfg.margins, dtype=torch.float32)[train_pairs.strength]
    info = fit_reward_model(
        ctx, cfg, train_pairs, eval_pairs, out_dir, margin_loss, cfg.seed, margins=margins, checkpoints=checkpoints
    )
    write_spec(out_dir, {"kind": "model", "members": [model_spec(info)]})
    check_strength(cfg, info)
    return info
