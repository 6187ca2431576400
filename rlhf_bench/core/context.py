"""What every stage and method receives: the config, the task, the device, the tracker.

The pipeline fills in the paths of the cached checkpoints (SFT, reward model) as it goes;
methods load the models they need from those paths, the same way for the tiny model and
for a hub model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_bench.config import Config
from rlhf_bench.core import models
from rlhf_bench.core.device import autocast
from rlhf_bench.core.rollout import generate, pad
from rlhf_bench.core.train import Cost
from rlhf_bench.tracking.wandb_run import Tracker


@dataclass
class RunContext:
    cfg: Config
    task: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype | None
    tracker: Tracker
    cost: Cost = field(default_factory=Cost)
    base_path: str | None = None
    sft_path: str | None = None
    preferences_path: str | None = None
    reward_model_path: str | None = None
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_keys: dict[str, str] = field(default_factory=dict)  # content hash of each stage's output

    def autocast(self):
        return autocast(self.device, self.dtype)

    @property
    def max_new_tokens(self) -> int:
        return self.task.max_response_tokens

    # --- models -------------------------------------------------------------------------
    def load_policy(self, path: str | None = None) -> torch.nn.Module:
        """A causal LM from ``path`` (default: the SFT checkpoint), on the run's device."""
        m = self.cfg.model
        return models.load_causal_lm(path or self.sft_path, self.tokenizer, trust_remote_code=m.trust_remote_code).to(
            self.device
        )

    def load_reference(self) -> torch.nn.Module:
        """The frozen SFT policy that KL is measured against."""
        ref = self.load_policy().eval()
        ref.requires_grad_(False)
        return ref

    def load_reward(self):
        """The reward the method optimises (a reward model, an ensemble, or the gold reward)."""
        from rlhf_bench.rewards.reward import load_reward

        return load_reward(self, self.reward_model_path)

    # --- data ---------------------------------------------------------------------------
    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(a CPU generator for prompt and minibatch order, a device generator for sampling), from the run seed."""
        seed = self.cfg.seed
        return torch.Generator().manual_seed(seed), torch.Generator(device=self.device).manual_seed(seed + 1)

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        """``n`` training prompts drawn with replacement."""
        pool = self.task.train_prompts
        return [pool[int(i)] for i in torch.randint(len(pool), (n,), generator=generator)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def pad_prompts(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad(prompt_ids, self.tokenizer.pad_token_id, "left", self.device)

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
        """Response texts without the pad and EOS tokens."""
        eos = self.tokenizer.eos_token_id
        return [
            self.tokenizer.decode([t for t, m in zip(row.tolist(), mrow.tolist()) if m and t != eos])
            for row, mrow in zip(response_ids.cpu(), response_mask.cpu())
        ]

    # --- the shared passes ----------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        model: torch.nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        temperature: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        with self.autocast():
            out = generate(
                model,
                prompt_ids,
                prompt_mask,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=temperature,
                banned_token_ids=models.banned_tokens(self.tokenizer),
                generator=generator,
            )
        model.train(was_training)
        self.cost.tokens_generated += int(out[1].sum())
        return out

    @torch.no_grad()
    def score(self, reward, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """The reward of each response (normalised reward-model score, or gold): [B]."""
        scores = reward(self, prompt_ids, prompt_mask, response_ids, response_mask)
        self.cost.reward_model_queries += scores.shape[0]
        return scores.float()

    def gold(self, prompts: list[str], response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """The task's gold reward of each response: [B] (on CPU)."""
        return torch.tensor(
            self.task.gold_reward(prompts, self.decode(response_ids, response_mask)),
            dtype=torch.float32,
        )
