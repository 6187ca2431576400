"""What must hold on a CUDA device that a CPU cannot show: bf16 autocast with fp32 trained and bf16
frozen weights, the device generator and determinism, ``device=cuda:N``, memory freed between
stages, an NCCL process group of one process.

Every test is marked ``gpu``: skipped without CUDA (tests/conftest.py). benchmarks/gpu_check.py runs
them on the GPU (``pytest -m gpu``); its dry run runs them on the CPU (RLHF_BENCH_GPU_TESTS_ON_CPU=1),
where each checks what a CPU can: the dtypes under CPU autocast, the CPU generator, exact
determinism, no model left alive after a stage, a gloo group of one process.
"""

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import RM_FAST, fast_overrides

from rlhf_bench import pipeline
from rlhf_bench.compose import load_config
from rlhf_bench.core.device import resolve_device, resolve_dtype, seed_everything
from rlhf_bench.tracking.wandb_run import Tracker

pytestmark = pytest.mark.gpu
ON_CPU = os.environ.get("RLHF_BENCH_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
GRPO_STEPS, GRPO_LR = 2, 1e-4


def make_run(root: Path, device: str = DEVICE, precision: str = "bf16", extra: tuple[str, ...] = ()):
    """What a method receives on ``device``: the tiny base model as the SFT policy (sft.steps=0), a
    few preference pairs and the gold reward; the stages cached in the session's shared folder."""
    overrides = [o for o in fast_overrides(root, ppo=False, reward_model=False) if not o.startswith("device=")]
    small = ["sft.steps=0", "preferences.n_train=32", "preferences.n_eval=16", "reward_model=gold"]
    cfg = load_config([*overrides, *small, f"device={device}", f"precision={precision}", *extra])
    dev = resolve_device(cfg.device)
    tracker = Tracker(type("L", (), {"mode": "disabled"})(), root, "gpu", "gpu", {})
    return pipeline.prepare(cfg, tracker, dev, resolve_dtype(cfg.precision, dev), None)[0]


def sampled_batch(ctx, policy, seed: int = 0, prompts: int = 8):
    """[prompts, R] responses of the policy to ``prompts`` training prompts, drawn with the run's
    device generator seeded ``seed``."""
    texts = ctx.sample_prompts(prompts, torch.Generator().manual_seed(0))
    prompt_ids, prompt_mask = ctx.pad_prompts(ctx.encode_prompts(texts))
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    return (prompt_ids, prompt_mask, *ctx.sample(policy, prompt_ids, prompt_mask, 1.0, generator))


def test_bf16_autocast_trains_fp32_weights_and_freezes_bf16_ones(tmp_path):
    ctx = make_run(tmp_path)
    assert ctx.dtype == torch.bfloat16
    # precision=auto is bf16 on a CUDA device that supports it, fp32 on a CPU
    auto = resolve_dtype("auto", ctx.device)
    assert auto == (torch.bfloat16 if ctx.device.type == "cuda" and torch.cuda.is_bf16_supported() else None)
    policy, reference = ctx.load_policy().train(), ctx.load_reference()
    for p in policy.parameters():
        assert p.dtype == torch.float32 and p.requires_grad and p.device.type == ctx.device.type
    for p in reference.parameters():
        assert p.dtype == torch.bfloat16 and not p.requires_grad and p.device.type == ctx.device.type

    head_dtypes = []
    policy.get_output_embeddings().register_forward_hook(lambda m, i, out: head_dtypes.append(out.dtype))
    batch = sampled_batch(ctx, policy)
    with ctx.autocast():
        logp, _ = ctx.logprobs(policy, *batch)
        ref_logp, _ = ctx.logprobs(reference, *batch)
    assert head_dtypes and set(head_dtypes) == {torch.bfloat16}  # the matmuls ran in bf16
    assert torch.isfinite(logp).all() and torch.isfinite(ref_logp).all()
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    (-(logp * batch[3]).sum()).backward()
    assert all(p.grad.dtype == torch.float32 for p in policy.parameters() if p.grad is not None)
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # AdamW's master weights stay fp32
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_sampling_draws_from_the_device_generator_deterministically(tmp_path):
    ctx = make_run(tmp_path)
    prompt_gen, sample_gen = ctx.generators()
    assert prompt_gen.device.type == "cpu" and sample_gen.device.type == ctx.device.type
    policy = ctx.load_policy()
    first, again, other = (sampled_batch(ctx, policy, seed)[2] for seed in (0, 0, 1))
    assert first.device.type == ctx.device.type
    assert torch.equal(first, again)  # same seed, same model: the same tokens, exactly
    assert not torch.equal(first, other)


def grpo_run(root: Path) -> tuple[list[torch.Tensor], dict]:
    """GRPO_STEPS steps of GRPO from the same SFT policy and seed: (final weights on the CPU, history)."""
    from hydra.utils import get_method

    ctx = make_run(root, extra=("method=grpo", f"method.steps={GRPO_STEPS}", f"method.lr={GRPO_LR}"))
    seed_everything(ctx.cfg.seed)
    policy = get_method(ctx.cfg.method._target_)(ctx, ctx.cfg.method)
    return [p.detach().float().cpu() for p in policy.parameters()], ctx.tracker.history


def test_two_identical_training_runs_agree(tmp_path):
    """On a CPU the two runs are bitwise equal. On CUDA some backward kernels (embedding, index_add)
    add with atomics in no fixed order, so the runs may drift apart: the first step, before any
    update, must agree to 1e-5 (relative), and the weights within 3 x steps x lr (AdamW moves a weight
    by about lr per step however small its gradient: the scale of any divergence)."""
    weights_a, history_a = grpo_run(tmp_path)
    weights_b, history_b = grpo_run(tmp_path)
    stage = next(iter(history_a))
    assert len(history_a[stage]) == len(history_b[stage]) == GRPO_STEPS
    first_a, first_b = history_a[stage][0], history_b[stage][0]
    assert first_a.keys() == first_b.keys()
    if DEVICE == "cpu":
        assert history_a == history_b
        assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
        return
    for key in first_a:
        if not key.startswith("timing/"):
            assert first_a[key] == pytest.approx(first_b[key], rel=1e-5, abs=1e-7), key
    drift = max(float((a - b).abs().max()) for a, b in zip(weights_a, weights_b))
    assert drift <= 3 * GRPO_STEPS * GRPO_LR, drift


def test_device_cuda_n(tmp_path):
    if DEVICE == "cpu":  # without CUDA, device=cuda:N composes and fails at once with the fix named
        load_config(["device=cuda:0"])
        with pytest.raises(RuntimeError, match="device=cpu"):
            resolve_device("cuda:0")
        return
    n = torch.cuda.device_count() - 1
    ctx = make_run(tmp_path, device=f"cuda:{n}")
    assert ctx.device == torch.device("cuda", n)
    policy, reference = ctx.load_policy(), ctx.load_reference()
    assert {p.device for p in [*policy.parameters(), *reference.parameters()]} == {torch.device("cuda", n)}
    assert ctx.generators()[1].device == torch.device("cuda", n)
    assert sampled_batch(ctx, policy)[2].device == torch.device("cuda", n)


def live_models() -> int:
    from transformers import PreTrainedModel

    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), PreTrainedModel))  # type(): no proxy warns


def warm_up(device: str) -> None:
    """Run what the stages run once (fp32 and bf16-autocast matmuls, a backward), so that the
    buffers CUDA's libraries keep for the process (cuBLAS and cuBLASLt workspaces, through the caching
    allocator) exist before the baseline is read: they are not a stage's leftovers."""
    x = torch.randn(64, 64, device=device, requires_grad=True)
    linear = torch.nn.Linear(64, 64).to(device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        y = linear(x) @ x
    (y.float().sum() + (x @ x).sum()).backward()


def test_memory_is_freed_between_stages(tmp_path, monkeypatch):
    """After each stage that loads models (SFT, the preference pairs, the reward model) and after
    all of them: no model is left alive, and on CUDA the allocated memory is back where it started
    (within a quarter of the SFT model's weights, so that a model left behind would show)."""
    from rlhf_bench.core import train

    cuda = DEVICE == "cuda"
    warm_up(DEVICE)
    baseline = torch.cuda.memory_allocated() if cuda else 0
    seen: dict[str, tuple[int, int]] = {}
    exit_timer = train._Timer.__exit__

    def probe(timer, *exc):
        out = exit_timer(timer, *exc)
        seen[timer.stage] = (live_models(), torch.cuda.memory_allocated() - baseline if cuda else 0)
        return out

    monkeypatch.setattr(train._Timer, "__exit__", probe)
    small = ["sft.steps=5", "preferences.n_train=32", "preferences.n_eval=16", f"device={DEVICE}", "precision=bf16"]
    overrides = [o for o in fast_overrides(tmp_path, shared=False) if not o.startswith("device=")]
    cfg = load_config([*overrides, *RM_FAST, *small])
    dev = resolve_device(cfg.device)
    tracker = Tracker(type("L", (), {"mode": "disabled"})(), tmp_path, "gpu", "gpu", {})
    ctx, _ = pipeline.prepare(cfg, tracker, dev, resolve_dtype(cfg.precision, dev), None)
    sft_bytes = sum(f.stat().st_size for f in Path(ctx.sft_path).glob("*.safetensors"))
    assert set(seen) == {"sft", "preferences", "reward_model"}
    for stage, (models, allocated) in seen.items():
        assert models == 0, f"{models} models alive after the {stage} stage"
        assert allocated < sft_bytes / 4, f"{allocated} bytes still allocated after the {stage} stage"


PROCESS_GROUP = textwrap.dedent(
    """
    import json, os, torch, torch.distributed as dist
    cuda = torch.cuda.is_available() and os.environ.get("RLHF_BENCH_GPU_TESTS_ON_CPU") != "1"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", **({"device_id": device} if cuda else {}))
    x = torch.arange(4, dtype=torch.float32, device=device)
    dist.all_reduce(x)
    gathered = torch.empty(4 * dist.get_world_size(), device=device)
    dist.all_gather_into_tensor(gathered, x)
    box = [{"rank": dist.get_rank()}] if dist.get_rank() == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    dist.barrier()
    out = {"backend": dist.get_backend(), "world": dist.get_world_size(), "sum": x.tolist(),
           "gathered": gathered.tolist(), "box": box[0]}
    dist.destroy_process_group()
    print("RESULT " + json.dumps(out))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_group_of_one_process():
    """NCCL on CUDA (gloo on a CPU): a group of one initialises, all-reduces (the sum of one is
    itself), all-gathers, broadcasts an object, passes a barrier and is destroyed."""
    env = dict(
        os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    proc = subprocess.run([sys.executable, "-c", PROCESS_GROUP], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {
        "backend": "nccl" if DEVICE == "cuda" else "gloo",
        "world": 1,
        "sum": [0.0, 1.0, 2.0, 3.0],
        "gathered": [0.0, 1.0, 2.0, 3.0],
        "box": {"rank": 0},
    }
