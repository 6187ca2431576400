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
from dataclasses import dataclass, field

import torch

from rlhf_bench.core.ops import (
    entropy_from_logits,
    last_token_index,
    logprobs_from_logits,
    position_ids_from_mask,
)


@dataclass
class Rollout:
    """What an online method samples: prompts, responses and the per-token quantities on them."""

    prompt_ids: torch.Tensor  # [B, P] left padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right padded
    response_mask: torch.Tensor  # [B, R]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # logprobs, values, rewards ... [B, R] or [B]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows ``index`` of every tensor."""
        return Rollout(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.response_ids[index],
            self.response_mask[index],
            {k: v[index] for k, v in self.extras.items()},
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

    R <= max_new_tokens (generation stops when every row has emitted EOS). Tokens after a
    row's first EOS are set to ``pad_token_id`` and masked out. ``banned_token_ids`` (pad,
    bos, unk) are never sampled.
    """
    # a peft model forwards **kwargs to the model it wraps: ask that model for the argument's name
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = _cache_argument(type(inner))
    batch = prompt_ids.shape[0]
    device = prompt_ids.device
    attention_mask = prompt_mask.clone()
    position_ids = position_ids_from_mask(attention_mask)
    input_ids, cache = prompt_ids, None
    tokens, finished = [], torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        cache = _model_cache(out)
        logits = out.logits[:, -1, :].float() / temperature
        if banned_token_ids:
            logits[:, list(banned_token_ids)] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        if generator is not None and generator.device != probs.device:
            next_token = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        else:
            next_token = torch.multinomial(probs, 1, generator=generator)
        next_token = next_token.squeeze(-1).masked_fill(finished, pad_token_id)
        tokens.append(next_token)
        finished |= next_token == eos_token_id
        if bool(finished.all()):
            break
        # Finished rows keep attending normally; their later tokens are discarded below.
        input_ids = next_token.unsqueeze(-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
    response_ids = torch.stack(tokens, dim=1)
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


def response_logits(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Next-token logits at the positions that predict each response token: [B, R, V]."""
    input_ids, attention_mask, position_ids = _sequence(prompt_ids, prompt_mask, response_ids, response_mask)
    length = response_ids.shape[1]
    # Only the last R+1 positions are needed; skipping the prompt's logits saves the LM head's work.
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=length + 1,
    )
    return out.logits[:, :-1, :]


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log pi(response token | context) at ``temperature``: ([B, R], [B, R] entropy or None).

    Values at masked positions are meaningless; mask them before use.
    """
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    logits = logits.float() / temperature
    logprobs = logprobs_from_logits(logits, response_ids)
    # Entropy is logged, not optimised: no graph for it.
    return logprobs, (entropy_from_logits(logits.detach()) if with_entropy else None)


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
