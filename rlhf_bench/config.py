"""The root config and its shared sections (structured configs, Hydra's schemas).

The YAML files in ``conf/`` extend these schemas (``defaults: [/schema/<group>/<name>@_here_]``),
so a typo or a wrong type in a YAML file or on the command line is an error naming the key.
The entry point converts the composed config once (``OmegaConf.to_object``); code past it
receives these dataclasses, never raw dicts.

Every option's dataclass lives beside its code: a method's in ``methods/<name>.py``, a task's in
``tasks/``, a reward model's in ``rewards/``, the tiny model's and LoRA's in ``core/models.py``,
the checkpoint schedule's in ``core/checkpoint.py``. This module imports none of the methods,
rewards or tasks; ``compose.register_schemas`` finds their dataclasses from the ``_target_`` of
each YAML in ``conf/`` and stores them in Hydra's ConfigStore.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from rlhf_bench.core.checkpoint import CheckpointConfig
from rlhf_bench.core.models import LoRAConfig, TinyModelConfig
from rlhf_bench.errors import require, require_choice


class WandbMode(str, enum.Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Precision(str, enum.Enum):
    auto = "auto"  # bf16 autocast on a CUDA device that supports it, fp32 otherwise
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class PathsConfig:
    results_dir: str = "results"
    artifacts_dir: str = "artifacts"


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


# lm-eval's suite that ships with the package (evaluation/lm_eval_suite.py writes it)
LM_EVAL_SUITE = ("rb_perplexity", "rb_gold", "rb_probe")


@dataclass
class LmEvalConfig:
    tasks: list[str] = field(default_factory=lambda: list(LM_EVAL_SUITE))  # [] turns lm-eval off
    limit: int | None = 128  # documents per task (None: all)
    batch_size: int = 32
    max_gen_toks: int = 32


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
    # method: the run seed seeds the method (SFT, pairs and reward model keep their own seeds, so a
    # sweep over seeds shares them) | pipeline: it also seeds SFT, the preference sampling and the
    # reward model (each stage still cached by its config, seed included): whole-pipeline variance
    seed_scope: str = "method"

    def __post_init__(self) -> None:
        require(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            "device",
            "must be one of auto, cpu, cuda, cuda:N, mps",
            self.device,
        )
        # the run's folder is results/runs/<stamp>-<run_name>-<suffix>: a name, not a path
        require(
            self.run_name is None or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}", self.run_name) is not None,
            "run_name",
            "must be a plain name: letters, digits and . _ = + - (no / or \\, no leading '.' or '-', "
            "at most 100 characters); e.g. run_name=dpo-beta0.1",
            self.run_name,
        )
        require_choice(self.seed_scope, SEED_SCOPES, "seed_scope")
        if self.seed_scope == "pipeline":
            self.sft, self.preferences = (dataclasses.replace(s, seed=self.seed) for s in (self.sft, self.preferences))
            if dataclasses.is_dataclass(self.reward_model) and hasattr(self.reward_model, "seed"):
                self.reward_model = dataclasses.replace(self.reward_model, seed=self.seed)


SEED_SCOPES = ("method", "pipeline")
# the stage seeds that seed_scope=pipeline sets to the run seed (the record's config shows them)
PIPELINE_SEEDS = ("sft.seed", "preferences.seed", "reward_model.seed")


def to_plain(obj: Any) -> Any:
    """Dataclasses, enums and containers -> JSON-ready dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
