"""Structured configs: one dataclass per config group option, registered in Hydra's ConfigStore.

The YAML files in ``conf/`` extend these schemas (``defaults: [/schema/<group>/<name>@_here_]``),
so a typo or a wrong type in a YAML file or on the command line is an error naming the key.
The entry point converts the composed config once (``OmegaConf.to_object``); code past it
receives these dataclasses, never raw dicts.

Method, task and reward-model dataclasses live beside their code (``methods/ppo.py`` ...);
this module holds the shared ones and registers them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from rlhf_bench.evaluation.lm_eval_suite import LmEvalConfig


class ConfigError(ValueError):
    """A config value that is well-typed but not allowed; the message names the key."""

    def __init__(self, key: str, problem: str, value: Any = MISSING):
        self.key = key
        got = "" if value is MISSING else f" (got {value!r})"
        super().__init__(f"{key} {problem}{got}")


def require(condition: bool, key: str, problem: str, value: Any = MISSING) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, problem, value)


def require_choice(value: Any, choices, key: str) -> None:
    """Raise a ConfigError for ``key`` unless ``value`` is one of ``choices``."""
    require(value in choices, key, f"must be one of {', '.join(map(str, choices))}", value)


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on a CUDA device that supports it, fp32 otherwise
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class PathsConfig:
    results_dir: str = "results"
    artifacts_dir: str = "artifacts"


@dataclass
class CheckpointConfig:
    """When training stages checkpoint, and whether a re-run resumes."""

    every_steps: int = 0  # 0: no step-based schedule
    every_seconds: float = 300.0  # 0: no time-based schedule (SIGTERM still checkpoints)
    resume: bool = True  # a re-run of an interrupted run (same config) continues it
    verify_artifacts: str = "hash"  # hash | size | none: how cached stages are checked before reuse

    def __post_init__(self) -> None:
        require(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", self.every_steps)
        require(self.every_seconds >= 0, "checkpoint.every_seconds", "must be >= 0", self.every_seconds)
        require_choice(self.verify_artifacts, ("hash", "size", "none"), "checkpoint.verify_artifacts")


@dataclass
class TinyModelConfig:
    """A causal LM built from a config, with a byte-level BPE tokenizer trained on the task's text."""

    architecture: str = "gpt2"  # gpt2 | llama
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    vocab_size: int = 1024
    max_positions: int = 64

    def __post_init__(self) -> None:
        require_choice(self.architecture, ("gpt2", "llama"), "model.tiny.architecture")
        require(
            self.d_model % self.n_head == 0,
            "model.tiny.d_model",
            "must be divisible by model.tiny.n_head",
            self.d_model,
        )
        require(
            self.vocab_size >= 300,
            "model.tiny.vocab_size",
            "must be >= 300 (256 bytes + merges + special tokens)",
            self.vocab_size,
        )


@dataclass
class LoRAConfig:
    """Low-rank adapters on the method's policy (Hu et al. 2021): W x + (alpha / r) * B A x, B = 0 at the start.

    Only A and B train; the reference is the same base weights with the adapters off, so a LoRA
    run holds one copy of the model. SFT and the reward model stay full fine-tuning. Dropout is
    off by default: RL needs the same log-probs in rollout and update (see ``disable_dropout``).
    """

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: peft's default for the architecture (gpt2: c_attn)

    def __post_init__(self) -> None:
        require(self.r >= 1, "model.lora.r", "must be >= 1", self.r)
        require(self.alpha > 0, "model.lora.alpha", "must be > 0", self.alpha)
        require(0 <= self.dropout < 1, "model.lora.dropout", "must be in [0, 1)", self.dropout)
        require(
            self.target_modules is None or len(self.target_modules) > 0,
            "model.lora.target_modules",
            "must be null (peft's default) or a non-empty list of module names",
            self.target_modules,
        )


@dataclass
class ModelConfig:
    """The policy's base model: any Hugging Face causal LM by name or path, or the tiny one."""

    name: str = "tiny"
    name_or_path: str | None = None  # None: build the tiny model from `tiny`
    revision: str | None = None
    trust_remote_code: bool = False
    init_seed: int = 0
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: memory for compute
    chat_template: bool = False  # format prompts with the tokenizer's chat template (as a user turn)
    # transformers' attention kernel: null = its default (SDPA where the model supports it), or
    # sdpa | eager | flash_attention_2 | flex_attention ...
    attn_implementation: str | None = None
    # torch.compile the policy's and reference's forward (dynamic shapes: generation grows the
    # sequence every step). Pays a compile on the first calls; worth it on a GPU for long runs.
    compile: bool = False


@dataclass
class SFTConfig:
    """Supervised fine-tuning of the base model on the task's demonstrations (stage 1)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.steps >= 0, "sft.steps", "must be >= 0", self.steps)
        require(self.batch_size >= 1, "sft.batch_size", "must be >= 1", self.batch_size)
        require(self.lr > 0, "sft.lr", "must be > 0", self.lr)


@dataclass
class PreferenceConfig:
    """Preference pairs sampled from the SFT policy and labelled by a simulated annotator.

    ``samples_per_prompt`` SFT samples are drawn for each prompt and every two of them make a
    pair (4 samples: 6 pairs, as Rafailov et al. 2023 built their IMDb pairs). With ``label``
    ``bradley_terry`` the annotator prefers response a over b with probability
    sigmoid((gold(a) - gold(b)) / temperature); with ``gold`` the higher gold reward is preferred
    and pairs of equal gold reward are dropped (they state no preference). Either label is then
    flipped with probability ``flip_prob`` (AlpacaFarm's label noise). Lower temperature means
    cleaner labels.
    """

    n_train: int = 4096  # prompts; each gives samples_per_prompt * (samples_per_prompt - 1) / 2 pairs
    n_eval: int = 512
    samples_per_prompt: int = 2
    label: str = "bradley_terry"  # bradley_terry | gold (deterministic: the gold reward decides)
    temperature: float = 0.1
    flip_prob: float = 0.0
    annotators: int = 1  # a pool of simulated annotators (AlpacaFarm): each pair labelled by one at random
    annotator_spread: float = 0.0  # annotator k's temperature: temperature * exp(spread * t_k), t_k in [-1, 1]
    generation_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n_train >= 1, "preferences.n_train", "must be >= 1", self.n_train)
        require(self.n_eval >= 1, "preferences.n_eval", "must be >= 1", self.n_eval)
        require(self.temperature > 0, "preferences.temperature", "must be > 0", self.temperature)
        require(self.annotators >= 1, "preferences.annotators", "must be >= 1", self.annotators)
        require(self.samples_per_prompt >= 2, "preferences.samples_per_prompt", "must be >= 2", self.samples_per_prompt)
        require_choice(self.label, ("bradley_terry", "gold"), "preferences.label")
        require(
            self.label == "bradley_terry" or self.annotators == 1,
            "preferences.annotators",
            "must be 1 with preferences.label=gold (the gold reward is the one annotator)",
            self.annotators,
        )
        require(self.annotator_spread >= 0, "preferences.annotator_spread", "must be >= 0", self.annotator_spread)
        require(
            0 <= self.flip_prob <= 0.5,
            "preferences.flip_prob",
            "must be in [0, 0.5]",
            self.flip_prob,
        )


@dataclass
class EvalConfig:
    """Evaluation on held-out prompts: gold reward, proxy reward, KL to SFT, win rate vs SFT."""

    name: str = "default"
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    n_prompts: int = 1024
    batch_size: int = 256
    temperature: float = 1.0
    exact: bool = True  # on an enumerable task (toy): also the exact sums (two enumerations of every response)

    def __post_init__(self) -> None:
        require(self.n_prompts >= 2, "eval.n_prompts", "must be >= 2", self.n_prompts)
        require(self.batch_size >= 1, "eval.batch_size", "must be >= 1", self.batch_size)
        require(self.temperature > 0, "eval.temperature", "must be > 0", self.temperature)


@dataclass
class LoggerConfig:
    """Weights & Biases. Offline by default: run files are written under the run folder."""

    name: str = "wandb"
    mode: WandbMode = WandbMode.offline
    project: str = "rlhf-bench"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class ParallelConfig:
    """How the processes of a data-parallel run (``torchrun``, ``accelerate launch``) hold the
    models; see ``core/distributed.py``. With one process every strategy is the same run."""

    # ddp: every process holds every model whole | fsdp: models sharded with FSDP2 |
    # deepspeed: models whole, the optimizer (and its gradients) partitioned by DeepSpeed ZeRO
    strategy: str = "ddp"
    zero_stage: int = 2  # deepspeed: 1 partitions the optimizer state, 2 its gradients too

    def __post_init__(self) -> None:
        require_choice(self.strategy, ("ddp", "fsdp", "deepspeed"), "parallel.strategy")
        require(
            self.zero_stage in (1, 2),
            "parallel.zero_stage",
            "must be 1 or 2 (ZeRO-3 shards the parameters: parallel.strategy=fsdp does that here)",
            self.zero_stage,
        )


@dataclass
class Config:
    task: Any = MISSING
    model: ModelConfig = MISSING
    method: Any = MISSING
    reward_model: Any = MISSING
    eval: EvalConfig = MISSING
    logger: LoggerConfig = MISSING
    sft: SFTConfig = field(default_factory=SFTConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = Precision.auto
    paths: PathsConfig = field(default_factory=PathsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run_name: str | None = None

    def __post_init__(self) -> None:
        require(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            "device",
            "must be one of auto, cpu, cuda, cuda:N, mps",
            self.device,
        )


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from rlhf_bench.methods.best_of_n import BestOfNConfig
    from rlhf_bench.methods.dpo import DPOConfig
    from rlhf_bench.methods.expert_iteration import ExpertIterationConfig
    from rlhf_bench.methods.grpo import GRPOConfig
    from rlhf_bench.methods.ipo import IPOConfig
    from rlhf_bench.methods.kto import KTOConfig
    from rlhf_bench.methods.ppo import PPOConfig
    from rlhf_bench.methods.rloo import RLOOConfig
    from rlhf_bench.methods.sft import SFTMethodConfig
    from rlhf_bench.methods.simpo import SimPOConfig
    from rlhf_bench.rewards.bradley_terry import BradleyTerryConfig
    from rlhf_bench.rewards.ensemble import EnsembleConfig
    from rlhf_bench.rewards.function import FunctionRewardConfig
    from rlhf_bench.rewards.gold import GoldConfig
    from rlhf_bench.rewards.margin import MarginConfig
    from rlhf_bench.rewards.pretrained import PretrainedRewardConfig
    from rlhf_bench.tasks.arithmetic import ArithmeticTaskConfig
    from rlhf_bench.tasks.sentiment import SentimentTaskConfig
    from rlhf_bench.tasks.toy import ToyTaskConfig
    from rlhf_bench.tasks.user import UserTaskConfig

    cs = ConfigStore.instance()
    cs.store(name="rlhf_bench_schema", node=Config)
    schemas = {
        "task": {
            "sentiment": SentimentTaskConfig,
            "arithmetic": ArithmeticTaskConfig,
            "user": UserTaskConfig,
            "toy": ToyTaskConfig,
        },
        "model": {"model": ModelConfig},
        "method": {
            "sft": SFTMethodConfig,
            "ppo": PPOConfig,
            "best_of_n": BestOfNConfig,
            "dpo": DPOConfig,
            "ipo": IPOConfig,
            "simpo": SimPOConfig,
            "kto": KTOConfig,
            "rloo": RLOOConfig,
            "grpo": GRPOConfig,
            "expert_iteration": ExpertIterationConfig,
        },
        "reward_model": {
            "bradley_terry": BradleyTerryConfig,
            "margin": MarginConfig,
            "ensemble": EnsembleConfig,
            "gold": GoldConfig,
            "pretrained": PretrainedRewardConfig,
            "function": FunctionRewardConfig,
        },
        "eval": {"eval": EvalConfig},
        "logger": {"wandb": LoggerConfig},
    }
    for group, options in schemas.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
