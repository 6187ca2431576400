"""Loading models the same way whether they come from the hub or from a local folder.

The tiny default is built from a config and a tokenizer trained on the task's text, then
saved with ``save_pretrained``; from there on it is loaded exactly as ``gpt2`` would be.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_bench.errors import ConfigError, require, require_choice


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


PAD, EOS = "<|pad|>", "<|endoftext|>"


def quiet_transformers() -> None:
    """Silence load-time notices (newly initialised heads are expected here)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped for transformers.

    Seeded with the full byte alphabet so that no text is ever unknown; left padding,
    with its own pad token distinct from EOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=EOS, padding_side="left"
    )


def build_tiny_model(cfg: TinyModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A randomly initialised causal LM (GPT-2 or Llama style) sized for a CPU; dropout off."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.architecture == "gpt2":
        config = GPT2Config(
            n_layer=cfg.n_layer,
            n_embd=cfg.d_model,
            n_head=cfg.n_head,
            n_positions=cfg.max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            # GPT-2's tanh GELU as one fused kernel (transformers' "gelu_new" is the same function
            # written as five elementwise ops: ~10% of a training step on a CPU)
            activation_function="gelu_pytorch_tanh",
            **ids,
        )
    else:
        config = LlamaConfig(
            num_hidden_layers=cfg.n_layer,
            hidden_size=cfg.d_model,
            intermediate_size=4 * cfg.d_model,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_head,
            max_position_embeddings=cfg.max_positions,
            tie_word_embeddings=True,
            **ids,
        )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def check_model_source(name_or_path: str, key: str = "model.name_or_path") -> None:
    """Refuse a model that is neither a folder here nor a hub id: a path (``/``, ``./``, ``../``,
    ``~``, a backslash, or more than one ``/``: hub ids are ``name`` or ``org/name``) that does not
    exist is named as such, not passed to the hub (whose error is "Repo id must be in the form...")."""
    path = Path(name_or_path).expanduser()
    looks_local = (
        name_or_path.startswith(("/", "./", "../", "~", ".")) or "\\" in name_or_path or name_or_path.count("/") > 1
    )
    if looks_local and not path.is_dir():
        problem = "is a file, not a model folder" if path.is_file() else "no such folder"
        raise ConfigError(
            key,
            f"{path}: {problem} (relative paths are from {Path.cwd()}); give a model folder "
            "(with config.json) or a hub id such as gpt2 or org/name",
        )


def context_length(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> int | None:
    """The most positions the model in ``name_or_path`` takes (its config's ``max_position_embeddings``
    or ``n_positions``), None where the config states none (relative positions: no fixed limit)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_shape(name_or_path: str | None, model_cfg) -> tuple[int, int]:
    """(layers, hidden width) of the policy: the tiny model's config (``name_or_path`` None) or the
    model config in ``name_or_path``."""
    if name_or_path is None:
        return model_cfg.tiny.n_layer, model_cfg.tiny.d_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        name_or_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    config = getattr(config, "text_config", None) or config
    layers = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer") if hasattr(config, k)), 1)
    width = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if hasattr(config, k)), 1)
    return int(layers), int(width)


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """A tokenizer set up for RL: left padding, and a pad token (EOS if the model has none)."""
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# Weights are loaded in fp32 whatever dtype the checkpoint was saved in (transformers >= 5 would keep
# a bf16 hub checkpoint in bf16): the trained ones are AdamW's master weights, whose small updates
# bf16 rounds away (8 bits of mantissa), and every model computes in ``precision`` (autocast).
WEIGHTS_DTYPE = torch.float32


def _finish(model: torch.nn.Module, tokenizer) -> torch.nn.Module:
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    return model


def load_causal_lm(
    path: str,
    tokenizer,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """``attn_implementation``: transformers' attention kernel (sdpa, eager, flash_attention_2 ...);
    None keeps transformers' default (SDPA where the model supports it). Weights in fp32
    (``WEIGHTS_DTYPE``)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        dtype=WEIGHTS_DTYPE,
    )
    return _finish(model, tokenizer)


def load_scalar_model(
    path: str, tokenizer, per_token: bool, trust_remote_code: bool = False, attn_implementation: str | None = None
) -> torch.nn.Module:
    """A one-output head on a pretrained backbone: per sequence (reward model) or per token (value).

    Loading a causal-LM or reward-model folder this way keeps the backbone's weights and
    adds (or reuses) the head.
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    quiet_transformers()
    cls = AutoModelForTokenClassification if per_token else AutoModelForSequenceClassification
    model = cls.from_pretrained(
        path,
        num_labels=1,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        dtype=WEIGHTS_DTYPE,
    )
    return _finish(model, tokenizer)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them.

    Non-reentrant checkpointing: exact gradients (the recomputed forward is the same
    computation), and it works when only adapters require grad. Active in training mode only;
    generation (no grad) keeps its KV cache.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def add_lora(model: torch.nn.Module, cfg: LoRAConfig, seed: int) -> torch.nn.Module:
    """``model`` wrapped in LoRA adapters (a peft ``PeftModel``); only the adapters require grad.

    A is initialised from its own seeded generator, so the result does not depend on (or move)
    the global random state. B starts at 0: the wrapped model computes exactly what ``model``
    does until the first update. ``save_pretrained`` on the result writes the adapters only
    (``adapter_config.json`` naming the base folder); ``AutoModelForCausalLM.from_pretrained``
    of that folder loads base + adapters when peft is installed.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules) if cfg.target_modules is not None else None,
        task_type="CAUSAL_LM",
    )
    base_path = Path(getattr(model, "name_or_path", "") or "")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # GPT-2's Conv1D stores weights transposed; peft notices and sets fan_in_fan_out itself.
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:  # no default target modules for this architecture, or a name not found
            raise ConfigError("model.lora.target_modules", f"does not fit {type(model).__name__}: {exc}") from None
    if base_path.is_dir():  # an absolute base path in adapter_config.json: the adapter folder loads from anywhere
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path.resolve())
    return peft_model


def has_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a LoRA policy (``add_lora``'s peft model)."""
    return hasattr(model, "peft_config")


class AdaptersDisabled(torch.nn.Module):
    """The base model of a LoRA policy as a module of its own: every call runs with the adapters off.

    The reference of a LoRA run without a second copy of the weights. The policy is held
    outside the module tree, so that ``eval()``, ``requires_grad_()`` or ``to()`` on the
    reference never reach the policy (its trainable adapters); ``parameters()`` lists the shared
    base weights. Calls run like a frozen model's: under ``no_grad``, with the policy in eval
    mode for the call and back in its own mode after (a gradient-checkpointed transformers model
    in training mode drops its KV cache, so sampling from the reference while the policy trains
    would see no context). Other attributes (``config``, ``device``) are the policy's.
    """

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "policy", policy)  # not a submodule: see above
        self.eval()

    @contextlib.contextmanager
    def _frozen(self):
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.disable_adapter():
                yield
        finally:
            self.policy.train(was_training)

    def forward(self, *args, cache=None, **kwargs):
        from rlhf_bench.core.rollout import _cache_argument

        if cache is not None:  # under the base model's own name for the KV-cache argument
            kwargs[_cache_argument(type(self.policy.get_base_model()))] = cache
        with self._frozen():
            return self.policy(*args, **kwargs)

    def generate(self, *args, **kwargs):
        """``generate`` of the base model (lm-eval's generation tasks call it)."""
        with self._frozen():
            return self.policy.generate(*args, **kwargs)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The policy's base weights (adapter weights left out), under the policy's names for them."""
        base = self.policy.get_base_model()
        for name, param in base.named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate):
            if "lora_" not in name:
                yield name, param

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            policy = self.__dict__.get("policy")
            if policy is None:
                raise
            return getattr(policy, name)


def disable_dropout(model: torch.nn.Module) -> None:
    """RL fine-tuning runs without dropout: logprobs must be the same in rollout and update."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def banned_tokens(tokenizer) -> list[int]:
    """Tokens never sampled: pad (when distinct from EOS), BOS (when distinct from EOS), UNK."""
    banned = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    banned.discard(None)
    banned.discard(tokenizer.eos_token_id)
    return sorted(banned)


def save_pretrained(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Model (safetensors) and tokenizer in ``folder``. A sharded model (fsdp): its whole state is
    gathered first, so every process must call this; the main process alone writes. Trained by
    ZeRO (deepspeed): its state is copied out of ZeRO's flat buffer first."""
    from rlhf_bench.core import distributed

    state = None
    if distributed.is_sharded(model):
        state = distributed.full_state_dict(model, tied=False)
        if not distributed.is_main():
            return
    elif distributed.zero():
        state = distributed.unflattened_state_dict(model)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state)
    tokenizer.save_pretrained(folder)
