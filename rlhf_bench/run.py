"""One run: what it was given (typed, immutable) and the services every stage and method uses.

``Run`` holds the config, the task, the tokenizer, the device and precision, the tracker, and
``stages``, the cached stages built so far (each a path and a content hash). The pipeline
builds it stage by stage: each stage returns its output and the pipeline makes the next ``Run``
with ``with_stage`` (``dataclasses.replace``), so no stage writes into a shared object. What a run
accumulates as it goes (tokens, wall time, the artifacts it wrote, its newest checkpoint) is the
one mutable part, ``Progress``, named as such.

``run_from_record`` (in ``pipeline``) is the one way to rebuild a run from a finished record: the
workers of a data-parallel run and the reproductions use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from rlhf_bench.config import Config
from rlhf_bench.core import distributed, models
from rlhf_bench.core.checkpoint import Checkpointer, fault_point
from rlhf_bench.core.device import autocast
from rlhf_bench.core.rollout import generate, pad, response_logprobs
from rlhf_bench.core.train import Cost
from rlhf_bench.errors import ConfigError, require
from rlhf_bench.tracking.wandb_run import Tracker


@dataclass(frozen=True)
class Stage:
    """A cached stage's output: its folder and the content hash it is stored under."""

    path: str
    hash: str


@dataclass(frozen=True)
class Stages:
    """The stages a run has built or found: base model, SFT, pairs, reward model (and the reward
    model's own backbone, ``reward_model.backbone``); None until the pipeline gets there."""

    base: Stage | None = None
    sft: Stage | None = None
    preferences: Stage | None = None
    reward_model: Stage | None = None
    reward_backbone: Stage | None = None


COUNTERS = ("tokens_generated", "tokens_trained", "reward_model_queries")
PERSIST_SECONDS = 10.0  # the record's running state is written at most this often from checkpoints


@dataclass
class Progress:
    """The one mutable part of a run: what it has spent (``cost``) and written (``artifacts`` by
    stage, the newest checkpoint, named in a failed run's record).

    Across attempts of one run (a resume): ``boundaries`` holds the run's state right after each
    cached stage it built (counters, history, artifacts: ``Run.stage_done``), which the record
    keeps while the run is unfinished, and ``earlier`` the boundaries an earlier attempt reached.
    A stage this attempt finds cached takes its boundary back from ``earlier``, so what the
    earlier attempt spent and logged building it is not lost; inside a stage, its checkpoint
    carries the same state. ``persist`` (set by the pipeline) writes the record's running state;
    it is called at each boundary and after checkpoints (``checkpoint_saved``)."""

    cost: Cost = field(default_factory=Cost)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_checkpoint: str | None = None
    boundaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    earlier: dict[str, dict[str, Any]] = field(default_factory=dict)
    persist: Callable[[], None] | None = None
    started: float = field(default_factory=time.monotonic)
    _open: dict[str, float] = field(default_factory=dict, repr=False)
    _persisted: float = field(default=0.0, repr=False)

    @contextlib.contextmanager
    def timed(self, stage: str):
        """``cost.timed(stage)``, with the stage's start kept while it runs, so that the record
        written at a checkpoint or boundary inside it counts its time so far."""
        self._open[stage] = time.monotonic()
        try:
            with self.cost.timed(stage):
                yield
        finally:
            del self._open[stage]

    def attempt_seconds(self) -> dict[str, float]:
        """This attempt's wall time: each stage's (its timer, and the time so far of one running)
        and the total since the attempt started."""
        now, seconds = time.monotonic(), dict(self.cost.wall_seconds)
        for stage, start in self._open.items():
            seconds[stage] = round(seconds.get(stage, 0.0) + now - start, 3)
        return {**seconds, "total": round(now - self.started, 3)}

    def checkpoint_saved(self) -> None:
        """A loop saved a checkpoint: write the record's running state (this attempt's wall time),
        at most every ``PERSIST_SECONDS`` (a loop may checkpoint every step)."""
        if self.persist is not None and time.monotonic() - self._persisted >= PERSIST_SECONDS:
            self._persisted = time.monotonic()
            self.persist()

    def checkpoint(self) -> str | None:
        """The newest checkpoint if it still exists (a stage's is removed once the stage is built)."""
        found = self.last_checkpoint
        return found if found is not None and Path(found).exists() else None


_console = Console(stderr=True)
ABSURD_TOKENS = 10**12  # more than this to generate or train: said in yellow, as a warning


def rollout_batch(method) -> tuple[str | None, int]:
    """(the key that sizes a method's rollout batch, the sequences one step samples): prompts per
    step (or batch) times samples per prompt; (None, 0) for a method that samples none."""
    for name in ("prompts_per_step", "prompts_per_round", "batch_size"):
        prompts = getattr(method, name, None)
        if isinstance(prompts, int) and hasattr(method, "temperature"):  # a method that samples
            per_prompt = next(
                (getattr(method, k) for k in ("group_size", "k", "n") if isinstance(getattr(method, k, None), int)), 1
            )
            return f"method.{name}", prompts * per_prompt
    return None, 0


def device_memory(device: torch.device) -> int | None:
    """The memory of ``device`` in bytes (a CUDA device's total, the machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _count(n: float) -> str:
    return f"{n:,.0f}" if n < 1e9 else f"{n:.1e}"


def budget_line(cfg: Config, prompt_tokens: int, response_tokens: int) -> tuple[str, bool]:
    """One line stating what the run will spend at most, and whether that is absurd (more than
    ``ABSURD_TOKENS`` tokens): SFT's sequences, and the method's steps x sequences, each response
    up to ``response_tokens`` generated and prompt + response trained ``epochs`` times."""
    method = cfg.method
    steps = next((getattr(method, k) for k in ("steps", "rounds") if isinstance(getattr(method, k, None), int)), 0)
    _, sequences = rollout_batch(method)
    epochs = next(
        (getattr(method, k) for k in ("epochs", "ppo_epochs") if isinstance(getattr(method, k, None), int)), 1
    )
    generate = steps * sequences * response_tokens
    train = steps * sequences * (prompt_tokens + response_tokens) * epochs
    sft = f"SFT {cfg.sft.steps:,} steps x {cfg.sft.batch_size} sequences; " if cfg.sft.steps else ""
    if not sequences and hasattr(method, "temperature"):  # best-of-n: samples when evaluated, trains nothing
        return f"budget: {sft}{method.name}: nothing trained, its samples drawn at evaluation", False
    if not sequences:  # the offline methods: they train on the pairs, sample nothing
        pairs = getattr(method, "batch_size", None)
        size = f" {_count(steps)} steps x {pairs} pairs" if steps and isinstance(pairs, int) else ""
        return f"budget: {sft}{method.name}{size}, no tokens generated", False
    line = (
        f"budget: {sft}{method.name} {_count(steps)} steps x {sequences:,} responses of <= {response_tokens} tokens: "
        f"<= {_count(generate)} tokens to generate, <= {_count(train)} to train"
    )
    absurd = max(generate, train) > ABSURD_TOKENS
    if absurd:
        line += f" (warning: more than {ABSURD_TOKENS:.0e} tokens; is method.steps={steps} meant?)"
    return line, absurd


class PromptTexts:
    """Chat-formatted prompt ids -> the prompt as given (``model.chat_template``), so that rewards
    can read a prompt without its template: filled by ``Run.encode_prompts``, read by
    ``Run.prompt_texts``. A cache, explicit: it lives as long as the run."""

    def __init__(self) -> None:
        self._text: dict[tuple[int, ...], str] = {}

    def remember(self, ids: list[list[int]], prompts: list[str]) -> None:
        self._text.update((tuple(row), p) for row, p in zip(ids, prompts))

    def get(self, row: tuple[int, ...], default: str) -> str:
        return self._text.get(row, default)


@dataclass(frozen=True)
class Run:
    cfg: Config
    task: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype | None
    tracker: Tracker | None
    stages: Stages = field(default_factory=Stages)
    checkpoint_dir: Path | None = None  # the run's own checkpoints (the method's training loop)
    progress: Progress = field(default_factory=Progress, repr=False, compare=False)
    prompts: PromptTexts = field(default_factory=PromptTexts, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cfg.model.chat_template and not getattr(self.tokenizer, "chat_template", None):
            base = self.stages.base.path if self.stages.base else self.cfg.model.name_or_path
            raise ConfigError(
                "model.chat_template",
                f"is true but the tokenizer of {base} has no chat template; set model.chat_template=false "
                "or use a model whose tokenizer has one",
            )

    def with_stage(self, name: str, path: str | Path, digest: str) -> Run:
        """This run with stage ``name`` built (or found) at ``path``, stored under ``digest``."""
        return dataclasses.replace(self, stages=dataclasses.replace(self.stages, **{name: Stage(str(path), digest)}))

    @property
    def cost(self) -> Cost:
        return self.progress.cost

    def stage_done(self, name: str, cached: bool) -> None:
        """After stage ``name`` (``cached``: found built, not built now): if an earlier attempt of
        this run built it, take back that attempt's state at this boundary (its counters,
        history and artifact entry: what the uninterrupted run holds here); then keep this
        boundary, persist the record, and pass the fault point ``done:<name>``."""
        progress = self.progress
        earlier = progress.earlier.get(name)
        same = earlier is not None and earlier["artifacts"].get(name, {}).get("hash") == (
            progress.artifacts.get(name, {}).get("hash")
        )
        if cached and same:
            for counter in COUNTERS:
                setattr(self.cost, counter, earlier["counters"][counter])
            if self.tracker is not None:
                self.tracker.restore(earlier["tracker"])
            progress.artifacts.update(earlier["artifacts"])
        self._keep_boundary(name)
        fault_point(f"done:{name}")

    def stage_built(self, name: str, artifact: dict[str, Any]) -> None:
        """Stage ``name`` is built (``artifact``: its record entry) and about to be put in place: keep
        the boundary now, so that a kill between putting it in place and ``stage_done`` finds the
        stage built by this run and takes back what building it counted (its history, counters)."""
        self.progress.artifacts[name] = artifact
        self._keep_boundary(name)

    def _keep_boundary(self, name: str) -> None:
        progress = self.progress
        progress.boundaries[name] = json.loads(  # a copy, as the record will hold it
            json.dumps(
                {
                    "counters": {c: getattr(self.cost, c) for c in COUNTERS},
                    "tracker": self.tracker.state() if self.tracker is not None else {"history": {}},
                    "artifacts": progress.artifacts,
                }
            )
        )
        if progress.persist is not None:
            progress.persist()

    @property
    def sft_path(self) -> str:
        """The SFT policy's folder (the reference of every method)."""
        return self.stages.sft.path

    def autocast(self):
        return autocast(self.device, self.dtype)

    # --- what the run will need, checked before any training ------------------------------
    def check_inputs(self) -> None:
        """Before the first stage: refuse a prompt that cannot fit the model's context with a
        response (``check_context``) and a rollout batch that cannot fit the device's memory
        (``check_memory``), then state the run's budget in one line (``budget_line``)."""
        prompt_tokens = self.check_context()
        self.check_memory(prompt_tokens)
        if distributed.is_main():
            line, absurd = budget_line(self.cfg, prompt_tokens, self.max_new_tokens)
            _console.print(f"[yellow]{line}[/yellow]" if absurd else line, highlight=False)

    def context_limit(self) -> tuple[int | None, str]:
        """(the most positions the policy takes, the key or thing to change for more)."""
        m = self.cfg.model
        if m.name_or_path is None:
            return m.tiny.max_positions, "raise model.tiny.max_positions"
        limit = models.context_length(self.stages.base.path, m.revision, m.trust_remote_code)
        return limit, "use a longer-context model"

    def check_context(self) -> int:
        """The longest prompt in tokens (chat template applied); a ``DataError`` naming the prompt
        (file:line for user data) if a prompt plus ``task.max_response_tokens`` exceeds the model's
        context, where generation would index past the position embeddings."""
        from rlhf_bench.tasks.data import DataError

        prompts = list(dict.fromkeys([*self.task.train_prompts, *self.task.eval_prompts]))
        lengths = [len(row) for row in self.encode(self.format_prompts(prompts))]
        limit, more = self.context_limit()
        longest = max(lengths, default=0)
        if limit is None or longest + self.max_new_tokens <= limit:
            return longest
        i = next(i for i, n in enumerate(lengths) if n + self.max_new_tokens > limit)
        where = getattr(self.task, "where", lambda _: None)(prompts[i]) or f"task={self.task.name}, prompt {i + 1}"
        raise DataError(
            f"{where}: the prompt is {lengths[i]} tokens; with task.max_response_tokens={self.max_new_tokens} "
            f"it needs {lengths[i] + self.max_new_tokens} positions, more than the model's context of {limit}: "
            f"shorten or drop the prompt, lower task.max_response_tokens, or {more} "
            f"({sum(n + self.max_new_tokens > limit for n in lengths)} of {len(prompts)} prompts are too long)"
        )

    def check_memory(self, prompt_tokens: int) -> None:
        """Refuse a method whose rollout batch cannot fit the device: one forward pass over it holds
        B x T x (V + 16 L d) x 4 bytes (fp32 logits over the vocabulary V, and activations of L
        layers of width d), B the sequences of a step, T the prompt and response tokens."""
        key, sequences = rollout_batch(self.cfg.method)
        if key is None:
            return
        hub = self.stages.base.path if self.cfg.model.name_or_path else None
        n_layer, width = models.model_shape(hub, self.cfg.model)
        tokens = prompt_tokens + self.max_new_tokens
        need = sequences * tokens * (len(self.tokenizer) + 16 * n_layer * width) * 4
        have = device_memory(self.device)
        require(
            have is None or need <= have,
            key,
            f"makes {sequences:,} sequences a step of up to {tokens} tokens: one forward pass over them needs "
            f"about {need / 2**30:,.1f} GiB (logits and activations), more than the {(have or 0) / 2**30:,.1f} GiB "
            f"of {self.device}; lower {key}",
            getattr(self.cfg.method, key.removeprefix("method.")),
        )

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as one that is only evaluated (the reference, a reward model): eval mode, no
        gradients, and under bf16 precision its weights in bf16. Half their memory; autocast runs
        its matrix multiplies in bf16 either way (norms and softmaxes it still runs in fp32, from
        bf16-rounded weights). Trained models keep fp32 weights (AdamW's masters)."""
        model.eval().requires_grad_(False)
        if self.dtype == torch.bfloat16:
            model.to(torch.bfloat16)
        return model

    @property
    def max_new_tokens(self) -> int:
        return self.task.max_response_tokens

    def response_token_ids(self) -> list[int] | None:
        """The only tokens a response may hold, where the task fixes them (``task.response_vocabulary``,
        one token per symbol: the exact toy world); None elsewhere. With them, EOS is never sampled and
        every response is exactly ``max_new_tokens`` long."""
        vocabulary = getattr(self.task, "response_vocabulary", None)
        if vocabulary is None:
            return None
        ids = self.tokenizer.convert_tokens_to_ids(list(vocabulary))
        if self.tokenizer.unk_token_id in ids or len(set(ids)) != len(ids):
            raise ConfigError("task", f"{self.task.name} needs its own tokenizer (model.name_or_path=null)")
        return ids

    def banned_token_ids(self) -> list[int]:
        """Tokens the sampler never draws: all but ``response_token_ids()`` where the task fixes them,
        else pad, BOS and UNK (``models.banned_tokens``)."""
        allowed = self.response_token_ids()
        if allowed is None:
            return models.banned_tokens(self.tokenizer)
        return sorted(set(range(len(self.tokenizer))) - set(allowed))

    # --- models -------------------------------------------------------------------------
    def load_policy(self, path: str | None = None, *, lora: bool = True) -> torch.nn.Module:
        """A causal LM to train from ``path`` (default: the SFT checkpoint), on the run's device.

        ``model.gradient_checkpointing`` switches on activation checkpointing. With
        ``model.lora.enabled`` the SFT policy (``path`` None, ``lora`` True) comes wrapped in LoRA
        adapters: pass it to ``load_reference(policy)``, which runs that same object with its
        adapters off rather than load a second copy. A model loaded by path (the SFT stage starts
        from the base model) stays whole: SFT is full fine-tuning. Sampling-only callers may pass
        ``lora=False``; they get the same function either way (B = 0 at the start).

        Every model loader shards what it loads over the processes when ``parallel.strategy``
        is fsdp and all processes load it (``distributed.sharding()``); ``whole()`` turns a
        sharded model back into a whole one.
        """
        m = self.cfg.model
        model = self._load_causal_lm(path or self.sft_path)
        if m.gradient_checkpointing:
            models.enable_gradient_checkpointing(model)
        if lora and path is None and m.lora.enabled:
            model = models.add_lora(model, m.lora, m.init_seed)
        model = self._sharded(model.to(self.device), functools.partial(self.load_policy, path, lora=lora))
        return self._compiled(model)

    def load_reference(self, policy: torch.nn.Module | None = None) -> torch.nn.Module:
        """The frozen SFT policy that KL is measured against.

        With ``policy`` a LoRA policy (``load_policy`` under ``model.lora.enabled``): its base
        weights with the adapters off, one copy of the model, and exactly the SFT model, since
        training moves only the adapters. Otherwise the SFT checkpoint loaded whole.
        """
        if policy is not None and models.has_lora(policy):
            return models.AdaptersDisabled(policy)
        ref = self.frozen(self._load_causal_lm(self.sft_path)).to(self.device)  # cast, then moved
        return self._compiled(self._sharded(ref, self.load_reference))

    def _sharded(self, model: torch.nn.Module, load_whole) -> torch.nn.Module:
        """``model`` sharded over the processes if they are loading it together under fsdp;
        ``load_whole()`` loads it again whole (for ``whole``)."""
        if distributed.sharding():
            distributed.shard_model(model)
            model._load_whole = load_whole
            if distributed.is_main():
                from rich.console import Console

                held = sum(p.to_local().numel() for p in model.parameters())
                total = sum(p.numel() for p in model.parameters())
                Console(stderr=True).print(
                    f"fsdp: {type(model).__name__.removeprefix('FSDP')} sharded over {distributed.world_size()} "
                    f"processes (this one holds {held:,} of its {total:,} parameters)"
                )
        return model

    def whole(self, model):
        """A sharded model as a whole one on the main process, for what it does alone (evaluate,
        save): every process must call this (it gathers the weights); the others get ``model``
        back. Anything not sharded (a whole model, a best-of-n policy) comes back as it is."""
        if not isinstance(model, torch.nn.Module) or not distributed.is_sharded(model):
            return model
        state = distributed.full_state_dict(model)
        if not distributed.is_main():
            return model
        with distributed.whole_models():
            copy = model._load_whole()
        copy.load_state_dict(state)
        return copy.train(model.training)

    def _compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model.compile``: torch.compile the module's forward in place (its state dict keeps its names)."""
        if self.cfg.model.compile:
            model.compile(dynamic=True)
        return model

    def _load_causal_lm(self, path: str) -> torch.nn.Module:
        m = self.cfg.model
        revision = m.revision if path == m.name_or_path else None  # a hub model as the SFT policy (sft.steps=0)
        return models.load_causal_lm(
            path,
            self.tokenizer,
            revision=revision,
            trust_remote_code=m.trust_remote_code,
            attn_implementation=m.attn_implementation,
        )

    def load_scalar_model(self, path: str, per_token: bool, frozen: bool = False) -> torch.nn.Module:
        """A one-output head (reward model: ``per_token`` False; value model: True) on the
        backbone in ``path``, on the run's device, with the model's loading settings;
        ``frozen``: only evaluated (``frozen()``)."""
        m = self.cfg.model
        model = models.load_scalar_model(
            path,
            self.tokenizer,
            per_token=per_token,
            trust_remote_code=m.trust_remote_code,
            attn_implementation=m.attn_implementation,
        )
        model = (self.frozen(model) if frozen else model).to(self.device)  # cast, then moved
        return self._sharded(model, functools.partial(self.load_scalar_model, path, per_token, frozen))

    def checkpointer(self, stage: str, folder: Path | None = None) -> Checkpointer:
        """Checkpoints of the loop ``stage`` in ``folder`` (default: the run's checkpoint folder)."""
        if folder is None and self.checkpoint_dir is not None:
            folder = self.checkpoint_dir / stage
        return Checkpointer(folder, self.cfg.checkpoint, self, stage)

    # --- data ---------------------------------------------------------------------------
    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(a CPU generator for prompt and minibatch order, a device generator for sampling), from the run seed."""
        seed = self.cfg.seed
        # the prompt order is shared by all processes (each takes its share); the samples are not
        sample_seed = seed + 1 + 7919 * distributed.rank()
        return torch.Generator().manual_seed(seed), torch.Generator(device=self.device).manual_seed(sample_seed)

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        """This process's share of ``n`` training prompts drawn with replacement (all of them in one process)."""
        pool = self.task.train_prompts
        return distributed.shard([pool[int(i)] for i in torch.randint(len(pool), (n,), generator=generator)])

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` as they are (responses, demonstrations); prompts go through ``encode_prompts``."""
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def format_prompts(self, prompts: list[str]) -> list[str]:
        """Prompts as the model expects them: a user turn of the tokenizer's chat template
        followed by the assistant's header (``model.chat_template``), or unchanged."""
        if not self.cfg.model.chat_template:
            return list(prompts)
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of prompts, formatted by ``format_prompts``. The template's own special
        tokens (BOS ...) are in its text, hence no ``add_special_tokens``."""
        ids = self.encode(self.format_prompts(prompts))
        if self.cfg.model.chat_template:
            self.prompts.remember(ids, prompts)
        return ids

    def prompt_texts(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        """[B, P] left-padded prompts -> their text; with a chat template, the prompts as they
        were given to ``encode_prompts`` (the template left out), for rewards that read text."""
        texts = self.decode(prompt_ids, prompt_mask)
        if not self.cfg.model.chat_template:
            return texts
        rows = [
            tuple(t for t, m in zip(row.tolist(), mrow.tolist()) if m)
            for row, mrow in zip(prompt_ids.cpu(), prompt_mask.cpu())
        ]
        return [self.prompts.get(row, text) for row, text in zip(rows, texts)]

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
        # a sharded model is gathered whole for the call: each process stops at its own EOS
        with self.autocast(), distributed.gathered(model):
            out = generate(
                model,
                prompt_ids,
                prompt_mask,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=temperature,
                banned_token_ids=self.banned_token_ids(),
                generator=generator,
            )
        model.train(was_training)
        self.cost.tokens_generated += int(out[1].sum())
        fault_point("generate")
        return out

    def logprobs(
        self,
        model: torch.nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropy) of responses under the distribution ``sample`` draws
        from: at ``temperature``, the tokens it never draws masked out. Every loss and KL of the
        methods and the evaluation goes through here: ([B, R], [B, R] or None)."""
        return response_logprobs(
            model,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            temperature=temperature,
            with_entropy=with_entropy,
            banned_token_ids=self.banned_token_ids(),
        )

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
