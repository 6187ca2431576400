"""Batched generation and the forward passes every method shares.

One layout for all methods: a left-padded prompt followed by a right-padded response,
    [pad pad p1 p2 p3 | r1 r2 eos pad]
with ``prompt_mask`` / ``response_mask`` marking real tokens. The response mask covers the
tokens up to and including the first EOS. Shapes: B batch, P prompt length, R response
length, V vocabulary.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace

import torch

from rlhf_bench.core import distributed
from rlhf_bench.core.ops import last_token_index, logprobs_and_entropy, position_ids_from_mask


@dataclass(frozen=True)
class Samples:
    """Responses to prompts, one row each: the batch every scoring and training pass reads."""

    prompt_ids: torch.Tensor  # [B, P] left padded
    prompt_mask: torch.Tensor  # [B, P] 1 on prompt tokens
    response_ids: torch.Tensor  # [B, R] right padded
    response_mask: torch.Tensor  # [B, R] 1 on response tokens, up to and including the first EOS

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompt_ids, prompt_mask, response_ids, response_mask): the arguments of every pass
        over a batch (``response_logprobs``, ``sequence_scores``, a reward's ``__call__``)."""
        return self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask

    def tokens(self) -> int:
        """The prompt and response tokens a training pass over these rows reads (cost accounting)."""
        return int(self.prompt_mask.sum() + self.response_mask.sum())


def select_rows(batch, index: torch.Tensor):
    """A dataclass of per-row tensors (``Samples``, a method's rollout) with only the rows ``index``:
    every tensor field and nested such dataclass indexed, anything else kept."""
    rows = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            rows[f.name] = value[index]
        elif is_dataclass(value):
            rows[f.name] = select_rows(value, index)
    return replace(batch, **rows)


def concat_samples(parts: Sequence[Samples], pad_id: int) -> Samples:
    """Several ``Samples`` as one batch: prompts re-padded on the left, responses on the right."""

    def stack(tensors: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
        width = max(t.shape[1] for t in tensors)
        padded = [
            torch.nn.functional.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=value)
            for t in tensors
        ]
        return torch.cat(padded)

    return Samples(
        stack([p.prompt_ids for p in parts], pad_id, left=True),
        stack([p.prompt_mask for p in parts], 0, left=True),
        stack([p.response_ids for p in parts], pad_id, left=False),
        stack([p.response_mask for p in parts], 0, left=False),
    )


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> ([B, L] ids, [B, L] mask), padded on ``side`` ('left' or 'right')."""
    length = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if not seq:
            continue
        sl = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        ids[i, sl] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


@functools.cache
def _cache_argument(model_cls: type) -> str:
    """The name of the KV-cache argument: 'cache' in recent transformers, 'past_key_values' before."""
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _model_cache(output) -> object:
    return output.get("cache", None) if "cache" in output else output.get("past_key_values", None)


def _full_attention_only(model: torch.nn.Module) -> bool:
    """Whether every layer of ``model`` keeps a plain KV cache (no sliding window, no linear attention):
    the cases ``generate`` may hand its own cache to."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return set(types) <= {"full_attention"}
    return getattr(config, "sliding_window", None) is None


@functools.cache
def _preallocated_layer():
    """A transformers KV-cache layer that holds room for ``capacity`` positions from the start and
    writes each step in place. The default layer grows by ``torch.cat``, re-copying the whole cache
    at every step of every layer (O(R^2) copies over a response of R tokens); this one returns
    views of its first positions, so attention sees exactly what it sees with the default."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            batch, heads = key_states.shape[:2]
            self.device = key_states.device
            self.key_buffer = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
            self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, self.length = self.length, self.length + key_states.shape[-2]
            self.key_buffer[:, :, start : self.length].copy_(key_states)
            self.value_buffer[:, :, start : self.length].copy_(value_states)
            self.keys = self.key_buffer[:, :, : self.length]
            self.values = self.value_buffer[:, :, : self.length]
            return self.keys, self.values

    return PreallocatedLayer


def _expanded_cache(prefill_cache, rows: torch.Tensor | None, capacity: int):
    """The prefill's KV cache copied into preallocated layers of ``capacity`` positions, row
    ``rows[i]`` of the prefill becoming row i (``rows`` None: the same rows)."""
    from transformers.cache_utils import Cache

    layers = []
    for prefill_layer in prefill_cache.layers:
        keys, values = prefill_layer.keys, prefill_layer.values
        if rows is not None:
            keys, values = keys.index_select(0, rows), values.index_select(0, rows)
        layer = _preallocated_layer()(capacity)
        layer.update(keys, values)
        layers.append(layer)
    return Cache(layers=layers)


def _shared_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """(unique prompt rows, for each row the index of its unique row), or None when all rows differ."""
    rows, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask], 1), dim=0, return_inverse=True)
    if rows.shape[0] == prompt_ids.shape[0]:
        return None
    length = prompt_ids.shape[1]
    return rows[:, :length], rows[:, length:], inverse


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    banned_token_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses with a KV cache: [B, P] left-padded prompts -> ([B, R] ids, [B, R] mask).
    ``temperature=0`` decodes greedily (the most likely token at each step).

    R <= max_new_tokens (generation stops when every row has emitted EOS). Tokens after a
    row's first EOS are set to ``pad_token_id`` and masked out. ``banned_token_ids`` (pad,
    bos, unk) are never sampled.

    On a model whose layers all keep a plain KV cache, rows with the same prompt (the k samples
    of each prompt in GRPO and RLOO) share one prefill pass, copied to each row, and the cache
    is preallocated for the whole response; the samples drawn are those of one pass per row.
    """
    # a peft model forwards **kwargs to the model it wraps: ask that model for the argument's name
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = _cache_argument(type(inner))
    own_cache = _full_attention_only(inner)
    batch, prompt_length = prompt_ids.shape
    device = prompt_ids.device
    # The whole attention mask up front (prompt, then ones): each step passes a longer view of it.
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
    position_ids = position_ids_from_mask(prompt_mask)
    banned = torch.as_tensor(sorted(set(banned_token_ids)), dtype=torch.long, device=device)
    banned = banned.view(1, -1).expand(batch, -1)
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    shared = _shared_prompts(prompt_ids, prompt_mask) if own_cache and max_new_tokens > 0 else None
    input_ids, cache, length = prompt_ids, None, 0
    for step in range(max_new_tokens):
        if step == 0 and shared is not None:
            rows_ids, rows_mask, rows = shared
            out = model(
                input_ids=rows_ids,
                attention_mask=rows_mask,
                position_ids=position_ids_from_mask(rows_mask),
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].index_select(0, rows)
        else:
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask[:, : prompt_length + step],
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{cache_arg: cache},
            )
            logits = out.logits[:, -1, :]
        cache = _model_cache(out)
        if step == 0 and own_cache:
            cache = _expanded_cache(cache, shared[2] if shared is not None else None, prompt_length + max_new_tokens)
        logits = logits.float()
        if temperature not in (0.0, 1.0):  # x / 1.0 == x: skip a pass over [B, V]
            logits = logits / temperature
        logits = logits.scatter(1, banned, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if temperature == 0.0:
            next_token = logits.argmax(-1, keepdim=True)
        elif generator is not None and generator.device != probs.device:
            next_token = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        else:
            next_token = torch.multinomial(probs, 1, generator=generator)
        next_token = next_token.squeeze(-1).masked_fill(finished, pad_token_id)
        tokens[:, step] = next_token
        length = step + 1
        finished |= next_token == eos_token_id
        if bool(finished.all()):
            break
        # Finished rows keep attending normally; their later tokens are discarded below.
        input_ids = next_token.unsqueeze(-1)
        position_ids = position_ids[:, -1:] + 1
    response_ids = tokens[:, :length]
    is_eos = (response_ids == eos_token_id).long()
    # A token is real if no EOS came strictly before it.
    eos_before = is_eos.cumsum(-1) - is_eos
    response_mask = (eos_before == 0).long()
    response_ids = response_ids.masked_fill(response_mask == 0, pad_token_id)
    return response_ids, response_mask


def _sequence(prompt_ids, prompt_mask, response_ids, response_mask):
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return input_ids, attention_mask, position_ids_from_mask(attention_mask)


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether ``model`` recomputes activations in this call (gradient checkpointing in training
    mode with grad on): transformers then drops the KV cache inside the layers."""
    flag = getattr(model, "is_activation_checkpointing", None)
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag) and model.training and torch.is_grad_enabled()


def response_logits(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Next-token logits at the positions that predict each response token: [B, R, V].

    The last response token predicts nothing scored: it is left out of the pass (causal attention:
    no other position sees it), and the LM head runs on the R positions that predict response
    tokens, not on the prompt's. Rows with the same prompt (the k samples of each prompt in GRPO
    and RLOO, the chosen and rejected response of a DPO pair) run their prompt once and continue
    from its keys and values, copied to each row; the gradients of the copies add up in the shared
    pass. Not under gradient checkpointing (it drops the cache), nor on an FSDP-sharded model (its
    units reshard after each forward: one forward per backward), nor on models with other kinds of
    attention layers: there every row runs whole.
    """
    length = response_ids.shape[1]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if length > 0 and _full_attention_only(inner) and not _checkpointing(inner) and not distributed.is_sharded(model):
        shared = _shared_prompts(prompt_ids, prompt_mask) if prompt_ids.shape[1] > 1 else None
        if shared is not None:
            return _logits_after_shared_prompts(
                model, _cache_argument(type(inner)), shared, response_ids, response_mask
            )
    input_ids, attention_mask, position_ids = _sequence(prompt_ids, prompt_mask, response_ids, response_mask)
    if length == 0:
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, :0]
    out = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, :-1],
        logits_to_keep=length,
    )
    return out.logits


def _logits_after_shared_prompts(model, cache_arg: str, shared, response_ids, response_mask) -> torch.Tensor:
    """``response_logits`` with one pass over each distinct prompt but its last token (``shared``: the
    distinct rows, their masks, and for each row of the batch the index of its prompt), then one
    over the last prompt token and the responses (all but their last token), attending to the
    prompts' keys and values. All the logits come from the second pass, so that the LM head runs
    on the same rows as in a whole pass per row."""
    rows_ids, rows_mask, rows = shared
    head = model(
        input_ids=rows_ids[:, :-1],
        attention_mask=rows_mask[:, :-1],
        position_ids=position_ids_from_mask(rows_mask)[:, :-1],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = _model_cache(head)
    cache.batch_select_indices(rows)  # each row gets its prompt's keys and values (differentiable)
    prompt_ids, prompt_mask = rows_ids.index_select(0, rows), rows_mask.index_select(0, rows)
    attention_mask = torch.cat([prompt_mask, response_mask[:, :-1]], dim=1)
    prompt_length = prompt_ids.shape[1]
    tail = model(
        input_ids=torch.cat([prompt_ids[:, -1:], response_ids[:, :-1]], dim=1),
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, prompt_length - 1 :],
        use_cache=True,
        **{cache_arg: cache},
    )
    return tail.logits


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    banned_token_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log pi(response token | context) at ``temperature``: ([B, R], [B, R] entropy or None).

    ``banned_token_ids``: tokens the sampler never draws (``generate``'s): they get no probability,
    so these are the log-probs of the distribution the responses were sampled from. Without it a
    policy could lower its measured KL by moving mass onto tokens it can never emit (the exact toy
    world showed PPO doing so). A response token that is itself banned (data not sampled by us)
    keeps its unmasked log-prob rather than -inf. Values at masked positions are meaningless; mask
    them before use. Use ``Run.logprobs``, which passes the run's banned tokens.
    """
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask).float()
    if temperature != 1.0:  # x / 1.0 == x: skip a pass over [B, R, V] (and its backward)
        logits = logits / temperature
    if len(banned_token_ids) == 0:
        # Entropy is logged, not optimised: no graph for it.
        return logprobs_and_entropy(logits, response_ids, with_entropy)
    banned = torch.as_tensor(list(banned_token_ids), dtype=torch.long, device=logits.device)
    # the dtype's lowest finite value, not -inf: exp gives exactly 0 and 0 * log 0 stays 0 in the entropy
    masked = logits.index_fill(-1, banned, torch.finfo(logits.dtype).min)
    token_logp, entropy = logprobs_and_entropy(masked, response_ids, with_entropy)
    label_banned = torch.isin(response_ids, banned) & response_mask.bool()
    if bool(label_banned.any()):
        unmasked, _ = logprobs_and_entropy(logits, response_ids)
        token_logp = torch.where(label_banned, unmasked, token_logp)
    return token_logp, entropy


def response_values(
    value_model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-token values V(s_t) from a token-classification model with one label: [B, R].

    s_t is the context before response token t, so the value is read at the position that
    predicts token t, like the logits.
    """
    input_ids, attention_mask, position_ids = _sequence(prompt_ids, prompt_mask, response_ids, response_mask)
    out = value_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    length = response_ids.shape[1]
    return out.logits[:, -length - 1 : -1, 0].float()


def sequence_scores(
    reward_model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Scalar reward of each (prompt, response), read at the last response token: [B].

    The reward model is a sequence-classification model with one label; we pool at the
    last real token ourselves, so the result does not depend on its pad-token setting.
    """
    input_ids, attention_mask, position_ids = _sequence(prompt_ids, prompt_mask, response_ids, response_mask)
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    index = prompt_ids.shape[1] + last_token_index(response_mask)
    last_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    return score_head(reward_model)(last_hidden).squeeze(-1).float()


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The linear head of a sequence- or token-classification model ('score' or 'classifier')."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise TypeError(f"{type(model).__name__} has no 'score' or 'classifier' head")
