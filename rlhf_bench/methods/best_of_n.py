"""Best-of-n sampling (Nakano et al. 2021; Stiennon et al. 2020; AlpacaFarm's "best-of-n").

Not a trainer: decode n responses from the SFT policy, score them with the reward model,
return the highest-scoring one. Its KL to the SFT policy has the closed form
    KL(pi_BoN || pi_SFT) = log n - (n - 1) / n
(exact when the n samples are distinct; an upper bound otherwise, Beirami et al. 2024),
reported beside the measured metrics. It costs n times the generation at inference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_bench.core import distributed
from rlhf_bench.errors import require
from rlhf_bench.rewards.reward import load_run_reward
from rlhf_bench.run import Run
from rlhf_bench.training.groups import select_best


@dataclass
class BestOfNConfig:
    _target_: str = "rlhf_bench.methods.best_of_n.train"
    name: str = "best_of_n"
    n: int = 16
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require(self.n >= 1, "method.n", "must be >= 1", self.n)
        require(self.temperature > 0, "method.temperature", "must be > 0", self.temperature)

    def conventions(self) -> dict:
        return {
            "kl_in": "none (inference-time)",
            "kl_reported": "analytic log n - (n-1)/n",
            "sampling_temperature": self.temperature,
        }


def analytic_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


class BestOfN:
    """decode -> score -> select, as a policy the evaluation can sample from."""

    def __init__(self, model: torch.nn.Module, reward, n: int, temperature: float):
        self.model, self.reward, self.n, self.temperature = model, reward, n, temperature
        self.analytic_kl = analytic_kl(n)

    @torch.no_grad()
    def sample(self, ctx: Run, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generator=None):
        ids = prompt_ids.repeat_interleave(self.n, dim=0)
        mask = prompt_mask.repeat_interleave(self.n, dim=0)
        response_ids, response_mask = ctx.sample(self.model, ids, mask, self.temperature, generator)
        scores = ctx.score(self.reward, ids, mask, response_ids, response_mask)
        return select_best(scores, response_ids, response_mask, self.n)

    def save_pretrained(self, folder: str | Path) -> None:
        """A best-of-n policy is its parts: write where they are."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {
            "method": "best_of_n",
            "n": self.n,
            "temperature": self.temperature,
            "analytic_kl": self.analytic_kl,
            "base": getattr(self.model, "name_or_path", None),
        }
        (folder / "best_of_n.json").write_text(json.dumps(spec, indent=2))


def train(ctx: Run, cfg: BestOfNConfig) -> BestOfN:
    """Nothing to train: the SFT policy and the reward model, composed (whole on every process
    under fsdp: the main process samples from them alone in the evaluation)."""
    with distributed.whole_models():
        return BestOfN(ctx.load_reference(), load_run_reward(ctx), cfg.n, cfg.temperature)
