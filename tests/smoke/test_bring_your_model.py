"""Bring your own model and reward: LoRA, gradient checkpointing, chat templates, a pretrained classifier as the reward."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import fast_overrides

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config
from rlhf_bench.config import TinyModelConfig
from rlhf_bench.core import models
from rlhf_bench.core.rollout import generate, pad, response_logprobs
from rlhf_bench.errors import ConfigError
from rlhf_bench.rewards.reward import PretrainedReward, load_reward
from rlhf_bench.run import Run, Stage, Stages
from rlhf_bench.tasks.sentiment import SentimentTask, SentimentTaskConfig

PROMPTS = ["The movie was", "I watched this film and", "Honestly, the acting", "This story"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def sft_folders(tiny_lm, tmp_path_factory):
    """A tiny GPT-2 and a tiny Llama saved as SFT checkpoints, with the tokenizer: {arch: folder}."""
    _, tok = tiny_lm
    folders = {}
    for arch in ("gpt2", "llama"):
        cfg = TinyModelConfig(architecture=arch, n_layer=2, d_model=32, n_head=2, vocab_size=400)
        folders[arch] = tmp_path_factory.mktemp(f"sft_{arch}")
        models.save_pretrained(models.build_tiny_model(cfg, tok, seed=0), tok, folders[arch])
    return folders


def make_ctx(folder: Path, tokenizer, *overrides: str, dtype: torch.dtype | None = None) -> Run:
    """A run context on CPU whose SFT checkpoint is ``folder`` (no pipeline: just the loaders);
    ``dtype``: autocast's (bf16 precision), None for fp32."""
    cfg = load_config(["device=cpu", "logger.mode=disabled", *overrides])
    return Run(
        cfg=cfg,
        task=SimpleNamespace(max_response_tokens=8),
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        dtype=dtype,
        tracker=None,
        stages=Stages(base=Stage(str(folder), "base"), sft=Stage(str(folder), "sft")),
    )


def a_batch(ctx: Run) -> tuple[torch.Tensor, ...]:
    """Four prompts and fixed random responses: (prompt_ids, prompt_mask, response_ids, response_mask)."""
    prompt_ids, prompt_mask = ctx.pad_prompts(ctx.encode_prompts(PROMPTS))
    generator = torch.Generator().manual_seed(0)
    response_ids = torch.randint(2, len(ctx.tokenizer), (len(PROMPTS), 6), generator=generator)
    return prompt_ids, prompt_mask, response_ids, torch.ones_like(response_ids)


def storages(*modules: torch.nn.Module) -> dict[int, int]:
    """{storage address: bytes} of every parameter of ``modules``: shared storage counted once."""
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for m in modules for p in m.parameters()}


# --- LoRA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, targets", [("gpt2", {"c_attn"}), ("llama", {"q_proj", "v_proj"})])
def test_lora_reference_is_the_policy_base_with_adapters_off(sft_folders, tiny_lm, arch, targets):
    _, tok = tiny_lm
    ctx = make_ctx(sft_folders[arch], tok, "model.lora.enabled=true", "model.lora.r=4")
    policy = ctx.load_policy().train()
    ref = ctx.load_reference(policy)
    assert isinstance(ref, models.AdaptersDisabled)  # the policy itself, adapters off: no second model
    assert set(policy.peft_config["default"].target_modules) == targets  # peft's default for the architecture
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    # One copy of the weights: the reference's parameters are the policy's base parameters, same storage.
    policy_params = dict(policy.get_base_model().named_parameters())
    ref_params = dict(ref.named_parameters())
    assert ref_params and not any("lora_" in n for n in ref_params)
    for name, param in ref_params.items():
        assert param.untyped_storage().data_ptr() == policy_params[name].untyped_storage().data_ptr()
    assert sum(storages(policy, ref).values()) == sum(storages(policy).values())
    assert not any(p.requires_grad for p in ref.parameters())
    assert policy.training and not ref.training  # ref.eval() does not reach the policy

    # The reference is the SFT model, to the last bit: log-probs and sampled responses.
    sft = models.load_causal_lm(str(sft_folders[arch]), tok).eval()
    batch = a_batch(ctx)
    ref_logp, _ = response_logprobs(ref, *batch)
    sft_logp, _ = response_logprobs(sft, *batch)
    assert torch.equal(ref_logp, sft_logp)
    ref_sample = ctx.sample(ref, batch[0], batch[1], 1.0, torch.Generator().manual_seed(1))
    sft_sample = ctx.sample(sft, batch[0], batch[1], 1.0, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(ref_sample, sft_sample))

    # A step on the adapters moves the policy and leaves the reference where it was.
    policy_before, _ = response_logprobs(policy, *batch)
    assert torch.equal(policy_before, sft_logp)  # B = 0 at the start
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    (-policy_before.sum()).backward()
    optimizer.step()
    policy_after, _ = response_logprobs(policy, *batch)
    assert not torch.allclose(policy_after, policy_before)
    assert torch.equal(response_logprobs(ref, *batch)[0], ref_logp)


def test_lora_only_for_the_method_policy(sft_folders, tiny_lm):
    """SFT (loading by path) and sampling callers (lora=False) get the whole model; off by default."""
    _, tok = tiny_lm
    folder = sft_folders["gpt2"]
    ctx = make_ctx(folder, tok, "model.lora.enabled=true")
    assert all(p.requires_grad for p in ctx.load_policy(str(folder)).parameters())
    assert all(p.requires_grad for p in ctx.load_policy(lora=False).parameters())
    ref = ctx.load_reference()  # no LoRA policy given (best-of-n): the SFT checkpoint, frozen
    assert not hasattr(ref, "peft_config") and not any(p.requires_grad for p in ref.parameters())
    plain = make_ctx(folder, tok)
    assert not hasattr(plain.load_policy(), "peft_config")


def test_lora_policy_saves_loads_and_checkpoints(sft_folders, tiny_lm, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_model, save_model
    from transformers import AutoModelForCausalLM

    _, tok = tiny_lm
    ctx = make_ctx(sft_folders["gpt2"], tok, "model.lora.enabled=true")
    policy = ctx.load_policy()
    with torch.no_grad():  # a trained adapter, not the zero one
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(0))
    batch = a_batch(ctx)
    expected, _ = response_logprobs(policy.eval(), *batch)

    # What pipeline.py does at the end of a run: adapters only, loadable as a causal LM by path.
    policy.save_pretrained(tmp_path / "policy")
    config = json.loads((tmp_path / "policy" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    assert torch.allclose(response_logprobs(loaded, *batch)[0], expected, atol=1e-6)

    # What core/checkpoint.py does: the whole module through safetensors, strict.
    save_model(policy, str(tmp_path / "policy.safetensors"))
    fresh = make_ctx(sft_folders["gpt2"], tok, "model.lora.enabled=true").load_policy()
    assert isinstance(fresh, PeftModel)
    missing, unexpected = load_model(fresh, str(tmp_path / "policy.safetensors"))
    assert not missing and not unexpected
    assert torch.equal(response_logprobs(fresh.eval(), *batch)[0], expected)


def test_lora_target_modules_error_names_the_key(sft_folders, tiny_lm):
    _, tok = tiny_lm
    ctx = make_ctx(sft_folders["gpt2"], tok, "model.lora.enabled=true", "model.lora.target_modules=[no_such_layer]")
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        ctx.load_policy()


def test_lora_reference_samples_with_its_cache_while_the_policy_trains(sft_folders, tiny_lm):
    """With gradient checkpointing, a transformers model in training mode drops its KV cache: the
    reference view must sample as the frozen base model does, whatever mode the policy is in."""
    _, tok = tiny_lm
    ctx = make_ctx(sft_folders["gpt2"], tok, "model.lora.enabled=true", "model.gradient_checkpointing=true")
    policy = ctx.load_policy().train()
    ref = ctx.load_reference()
    prompt_ids, prompt_mask, _, _ = a_batch(ctx)
    kwargs = dict(max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = ref(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    assert out.cache.get_seq_length() == prompt_ids.shape[1]  # the prompt's keys and values are kept
    while_training = generate(ref, prompt_ids, prompt_mask, generator=torch.Generator().manual_seed(0), **kwargs)
    assert policy.training  # left as it was
    policy.eval()
    with policy.disable_adapter():
        frozen = generate(policy, prompt_ids, prompt_mask, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(while_training[0], frozen[0]) and torch.equal(while_training[1], frozen[1])


# --- gradient checkpointing -----------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(sft_folders, tiny_lm, lora):
    _, tok = tiny_lm
    grads = {}
    for checkpointing in (False, True):
        ctx = make_ctx(
            sft_folders["llama"],
            tok,
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
            f"model.lora.enabled={str(lora).lower()}",
        )
        policy = ctx.load_policy().train()
        base = policy.get_base_model() if lora else policy
        assert base.is_activation_checkpointing == checkpointing
        with torch.no_grad():  # LoRA: a nonzero B, so that A gets a gradient too
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.normal_(generator=torch.Generator().manual_seed(0))
        logp, _ = response_logprobs(policy, *a_batch(ctx))
        logp.sum().backward()
        grads[checkpointing] = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], grad, atol=1e-6, rtol=1e-5)


# --- attention kernel and torch.compile ------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attention_kernel_switch_gives_the_same_logprobs(sft_folders, tiny_lm, arch):
    _, tok = tiny_lm
    logps = {}
    for kernel in ("eager", "sdpa"):
        ctx = make_ctx(sft_folders[arch], tok, f"model.attn_implementation={kernel}")
        policy = ctx.load_policy().eval()
        assert policy.config._attn_implementation == kernel
        logps[kernel], _ = response_logprobs(policy, *a_batch(ctx))
    torch.testing.assert_close(logps["sdpa"], logps["eager"], atol=1e-5, rtol=1e-5)
    # the kernel is how the model runs, not what it is: it does not change the stage hashes
    keys = [pipeline.model_key(load_config(o)) for o in ([], ["model.attn_implementation=eager", "model.compile=true"])]
    assert keys[0] == keys[1] and keys[0] != pipeline.model_key(load_config(["model.tiny.n_layer=3"]))


@pytest.mark.slow
def test_compile_switch_compiles_policy_and_reference(sft_folders, tiny_lm):
    _, tok = tiny_lm
    plain = make_ctx(sft_folders["gpt2"], tok)
    compiled = make_ctx(sft_folders["gpt2"], tok, "model.compile=true")
    batch = a_batch(plain)
    expected, _ = response_logprobs(plain.load_policy().eval(), *batch)
    for model in (compiled.load_policy().eval(), compiled.load_reference()):
        assert model._compiled_call_impl is not None  # nn.Module.compile: in place, same state-dict names
        assert "transformer.h.0.attn.c_attn.weight" in model.state_dict()
        got, _ = response_logprobs(model, *batch)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# --- chat templates -------------------------------------------------------------------------
def test_chat_template_formats_prompts_only(sft_folders, tiny_lm):
    _, tok = tiny_lm
    folder = sft_folders["gpt2"]
    chat_tok = models.load_tokenizer(str(folder))
    chat_tok.chat_template = CHAT_TEMPLATE
    plain = make_ctx(folder, chat_tok)
    assert plain.encode_prompts(PROMPTS) == plain.encode(PROMPTS)  # switch off: nothing changes
    ctx = make_ctx(folder, chat_tok, "model.chat_template=true")
    assert ctx.format_prompts(["Hi"]) == ["<|user|>Hi<|assistant|>"]
    ids = ctx.encode_prompts(PROMPTS)
    assert ids == ctx.encode([f"<|user|>{p}<|assistant|>" for p in PROMPTS])
    assert ctx.encode(["a response"]) == plain.encode(["a response"])  # responses are never templated
    prompt_ids, prompt_mask = ctx.pad_prompts(ids)
    assert ctx.prompt_texts(prompt_ids, prompt_mask) == PROMPTS  # rewards read the prompt without the template
    assert ctx.decode(prompt_ids, prompt_mask)[0] == f"<|user|>{PROMPTS[0]}<|assistant|>"


def test_chat_template_without_one_is_a_config_error(sft_folders, tiny_lm):
    _, tok = tiny_lm
    assert not tok.chat_template
    with pytest.raises(ConfigError, match="model.chat_template is true but the tokenizer of .* has no chat template"):
        make_ctx(sft_folders["gpt2"], tok, "model.chat_template=true")


# --- a pretrained classifier as the reward --------------------------------------------------
@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A GPT-2 sequence classifier (2 labels) with its own tokenizer, which has no pad token."""
    from transformers import AutoModelForSequenceClassification, GPT2Config, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("classifier")
    task = SentimentTask(SentimentTaskConfig(n_sft=300, n_train_prompts=8, n_eval_prompts=8))
    trained = models.train_tokenizer(task.sft_texts, 320)  # a different vocabulary from the policy's
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, eos_token=models.EOS)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=128, vocab_size=len(tok), num_labels=2)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_pretrained_reward_through_the_pipeline(classifier_folder, tmp_path):
    overrides = fast_overrides(tmp_path, ppo=False, reward_model=False) + [
        "reward_model=pretrained",
        f"reward_model.name_or_path={classifier_folder}",
        "reward_model.label_index=1",
        "reward_model.n_normalization_samples=32",
        "method=rloo",
        "method.steps=2",
        "method.prompts_per_step=4",
        "method.group_size=2",
        "eval.lm_eval.tasks=[]",
        "logger.mode=disabled",
    ]
    cfg = load_config(overrides)
    record = pipeline.run(cfg)
    assert record["status"] == "finished"
    assert record["reward_model"] == "pretrained"
    rm = record["metrics"]["reward_model"]
    assert 0 <= rm["accuracy"] <= 1 and 0 <= rm["gold_accuracy"] <= 1
    assert record["artifacts"]["reward_model"]["info"]["norm_std"] > 0
    for who in ("sft", "policy"):
        assert all(
            torch.isfinite(torch.tensor(record["metrics"][who][k])) for k in ("gold_reward", "proxy_reward", "kl")
        )
    assert abs(record["metrics"]["sft"]["proxy_reward"]) < 3  # normalised on SFT samples

    folder = Path(record["artifacts"]["reward_model"]["path"])
    spec = json.loads((folder / "reward.json").read_text())
    assert spec["kind"] == "pretrained" and spec["name_or_path"] == str(classifier_folder.resolve())
    ctx = pipeline.base_stage(cfg, None, torch.device("cpu"), None)
    reward = load_reward(ctx, folder)
    assert isinstance(reward, PretrainedReward)
    prompt_ids, prompt_mask = ctx.pad_prompts(ctx.encode_prompts(PROMPTS))
    response_ids, response_mask = pad(
        ctx.encode([" great", " a dull plot", "", " fine"]), ctx.tokenizer.pad_token_id, "right"
    )
    scores = reward(ctx, prompt_ids, prompt_mask, response_ids, response_mask)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    # The logit of label 1 of the classifier on prompt + response, re-tokenised by its own tokenizer.
    texts = [p + r for p, r in zip(PROMPTS, [" great", " a dull plot", "", " fine"])]
    batch = reward.tokenizer(texts, padding=True, return_tensors="pt")
    raw = reward.model(**batch).logits[:, 1]
    torch.testing.assert_close(scores, reward.norm(raw))


def test_pretrained_reward_label_index_checked(classifier_folder, tiny_lm):
    from rlhf_bench.tasks.judges import load_classifier

    spec = {"name_or_path": str(classifier_folder), "revision": None, "trust_remote_code": False}
    with pytest.raises(ConfigError, match="reward_model.label_index must be < the classifier's number of labels"):
        load_classifier({**spec, "label_index": 2, "input_format": "concat"}, torch.device("cpu"))
    with pytest.raises(ConfigError, match="reward_model.input_format is chat"):
        load_classifier({**spec, "label_index": 0, "input_format": "chat"}, torch.device("cpu"))


# --- end to end with LoRA -------------------------------------------------------------------
def test_pipeline_with_lora_on_the_tiny_model(tmp_path):
    overrides = fast_overrides(tmp_path, ppo=False, lm_eval=True) + [
        "model.lora.enabled=true",
        "model.gradient_checkpointing=true",
        "method=rloo",
        "method.steps=2",
        "method.prompts_per_step=4",
        "method.group_size=2",
        "method.lr=1e-2",
        "eval.lm_eval.limit=4",
        "logger.mode=disabled",
    ]
    record = pipeline.run(load_config(overrides))
    assert record["status"] == "finished"
    assert record["metrics"]["sft"]["kl"] == 0.0
    assert record["metrics"]["policy"]["kl"] != 0.0  # the adapters moved
    assert set(record["metrics"]["lm_eval"]) == {"sft", "policy"}  # lm-eval ran on the reference view too
    policy_dir = Path(record["artifacts"]["policy"]["path"])
    assert (policy_dir / "adapter_config.json").is_file()  # adapters only; the base is the SFT artifact


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny GPT-2 with its tokenizer in a local folder, as a user's own model would be."""
    folder = tmp_path_factory.mktemp("own_model")
    task = SentimentTask(SentimentTaskConfig(n_sft=1000, n_train_prompts=8, n_eval_prompts=8))
    tok = models.train_tokenizer(task.sft_texts, 400)
    cfg = TinyModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=400)
    models.save_pretrained(models.build_tiny_model(cfg, tok, seed=0), tok, folder)
    return folder


def test_pipeline_on_a_model_given_by_path_with_and_without_lora(model_folder, tmp_path):
    """The same run with LoRA off and on: the same SFT row to the last digit (the reference is the
    SFT model either way), a different policy, saved whole or as adapters."""
    records = {}
    for lora in (False, True):
        overrides = fast_overrides(tmp_path / f"lora_{lora}", ppo=False) + [
            f"model.name_or_path={model_folder}",
            f"model.lora.enabled={str(lora).lower()}",
            "sft.steps=5",
            "method=dpo",
            "method.epochs=1",
            "eval.lm_eval.tasks=[]",
            "logger.mode=disabled",
        ]
        records[lora] = record = pipeline.run(load_config(overrides))
        assert record["status"] == "finished"
        assert "base" not in record["artifacts"]
        assert record["artifacts"]["sft"]["info"]["steps"] == 5
        saved = {p.name for p in Path(record["artifacts"]["policy"]["path"]).iterdir()}
        assert ("adapter_config.json" in saved) == lora
        assert record["metrics"]["policy"]["kl"] != 0.0
    assert records[True]["metrics"]["sft"] == records[False]["metrics"]["sft"]
    assert records[True]["metrics"]["reward_model"] == records[False]["metrics"]["reward_model"]
    assert records[True]["metrics"]["policy"] != records[False]["metrics"]["policy"]


def test_a_checkpoint_saved_in_bf16_loads_in_fp32(tiny_lm, tmp_path):
    """transformers >= 5 loads a checkpoint in the dtype it was saved in, and most hub models are
    saved in bf16: our loaders hold fp32 weights (AdamW's small updates survive; compute is
    ``precision``'s autocast), the bf16 values exactly."""
    _, tok = tiny_lm
    cfg = TinyModelConfig(n_layer=1, d_model=32, n_head=2, vocab_size=400)
    saved = models.build_tiny_model(cfg, tok, seed=0).to(torch.bfloat16)
    models.save_pretrained(saved, tok, tmp_path / "bf16")
    policy = models.load_causal_lm(str(tmp_path / "bf16"), tok)
    value = models.load_scalar_model(str(tmp_path / "bf16"), tok, per_token=True)
    assert {p.dtype for m in (policy, value) for p in m.parameters()} == {torch.float32}
    for name, weight in saved.state_dict().items():
        assert torch.equal(policy.state_dict()[name], weight.float()), name


def test_under_bf16_the_frozen_models_hold_bf16_weights_and_the_trained_ones_fp32(sft_folders, tiny_lm):
    """precision=bf16: the reference and the reward model are only evaluated and hold bf16 weights
    (half the memory); the policy and the value model train on fp32 weights. Autocast runs the
    matmuls in bf16 either way: the reference's log-probs differ from the fp32 weights' under
    autocast by about as much as autocast's own rounding. With LoRA the reference is the policy's
    fp32 base (no copy to cast); under fp32 precision every model is fp32."""
    _, tok = tiny_lm
    folder = sft_folders["gpt2"]
    ctx = make_ctx(folder, tok, "precision=bf16", dtype=torch.bfloat16)
    policy, ref = ctx.load_policy(), ctx.load_reference()
    value = ctx.load_scalar_model(str(folder), per_token=True)
    reward = ctx.load_scalar_model(str(folder), per_token=False, frozen=True)

    def dtypes(model):
        return {p.dtype for p in model.parameters()}

    assert dtypes(policy) == dtypes(value) == {torch.float32}
    assert dtypes(ref) == dtypes(reward) == {torch.bfloat16}
    assert not ref.training and not any(p.requires_grad for m in (ref, reward) for p in m.parameters())
    assert 2 * sum(storages(ref).values()) == sum(storages(policy).values())

    batch = a_batch(ctx)
    with torch.no_grad():
        fp32_logp, _ = ctx.logprobs(policy, *batch)
        with ctx.autocast():
            autocast_logp, _ = ctx.logprobs(policy, *batch)
            ref_logp, _ = ctx.logprobs(ref, *batch)
    rounding = float((autocast_logp - fp32_logp).abs().max())
    assert ref_logp.dtype == torch.float32 and 0 < rounding < 0.1
    assert float((ref_logp - autocast_logp).abs().max()) < 3 * rounding

    lora = make_ctx(folder, tok, "precision=bf16", "model.lora.enabled=true", dtype=torch.bfloat16)
    lora_policy = lora.load_policy()
    assert dtypes(lora.load_reference(lora_policy)) == {torch.float32} == dtypes(lora_policy)
    assert dtypes(make_ctx(folder, tok).load_reference()) == {torch.float32}
