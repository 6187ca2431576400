"""Data parallelism on CPU with gloo: 2 processes x batch b take the same steps as 1 process x 2b,
and a whole run under torchrun writes one record, from the main process only."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fast_overrides

# Trains a tiny GPT-2 with the core's loss, batch sharding and optimizer step; saves the weights.
STEPS_SCRIPT = """
import sys
import torch
from rlhf_bench.config import TinyModelConfig
from rlhf_bench.core import distributed, models
from rlhf_bench.core.ops import position_ids_from_mask
from rlhf_bench.core.rollout import pad
from rlhf_bench.core.train import optimizer_step
from rlhf_bench.methods.sft import next_token_loss

out, optimizer_name = sys.argv[1], sys.argv[2]
distributed.setup(torch.device("cpu"))
torch.manual_seed(0)
texts = [f"review {i} : the film was {'good' if i % 3 else 'bad'} and {'long ' * (i % 5)}." for i in range(64)]
folder = out + ".model"  # built once (training a tokenizer is not bitwise reproducible across processes)
if distributed.is_main():
    tok = models.train_tokenizer(texts, 300)
    cfg = TinyModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=300)
    models.save_pretrained(models.build_tiny_model(cfg, tok, seed=0), tok, folder)
distributed.barrier()
tok = models.load_tokenizer(folder)
model = models.load_causal_lm(folder, tok).train()
optimizer = (
    torch.optim.SGD(model.parameters(), lr=0.5) if optimizer_name == "sgd"
    else torch.optim.AdamW(model.parameters(), lr=1e-3)
)
data = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
generator = torch.Generator().manual_seed(0)
for step in range(4):
    index = distributed.shard(torch.randint(len(data), (16,), generator=generator))  # global batch of 16
    ids, mask = pad([data[i] for i in index], tok.pad_token_id, "left")
    labels = ids.masked_fill(mask == 0, -100)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    loss = next_token_loss(logits, labels, mask)
    optimizer_step(loss, optimizer, max_grad_norm=1.0)
if distributed.is_main():
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    env = {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**__import__("os").environ, **env}
    )


@pytest.mark.parametrize("optimizer, tolerance", [("sgd", 1e-6), ("adamw", 1e-5)])
def test_two_processes_with_half_batches_take_the_steps_of_one_with_the_whole(tmp_path, optimizer, tolerance):
    """Tolerance: the only difference is the order of float sums (each process sums its half, then
    the halves are summed), ~1e-7 per step; AdamW divides by sqrt(v), which magnifies it where a
    gradient is ~0, hence its larger bound after 4 steps."""
    script = tmp_path / "steps.py"
    script.write_text(STEPS_SCRIPT)
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.pt"), optimizer], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(str(script), str(tmp_path / "two.pt"), optimizer, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    initial_moved = False
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=tolerance, rtol=0), (name, float((value - two[name]).abs().max()))
        initial_moved |= not torch.equal(value, torch.zeros_like(value))
    assert initial_moved


@pytest.mark.slow
def test_a_run_under_torchrun_writes_one_record_from_the_main_process(tmp_path):
    """DPO end to end on 2 processes: SFT, reward model and DPO train data-parallel; the main
    process alone samples the pairs, evaluates and writes. Its numbers match a 1-process run
    to within the float-order tolerance (Adam after ~50 steps: ~1e-3 on weights of ~1)."""
    args = [*fast_overrides(tmp_path / "two", ppo=False), "method=dpo", "method.epochs=1", "eval.lm_eval.tasks=[]"]
    double = _torchrun("-m", "rlhf_bench", *args, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    records = list((tmp_path / "two" / "results" / "runs").glob("*/record.json"))
    assert len(records) == 1  # one run, one record: the other process wrote none
    record = json.loads(records[0].read_text())
    assert record["status"] == "finished" and record["processes"] == 2
    assert len(list((tmp_path / "two" / "results" / "runs").glob("*/wandb/offline-run-*"))) == 1
    assert len(list((tmp_path / "two" / "artifacts" / "policy").iterdir())) == 1

    single_args = [
        *fast_overrides(tmp_path / "one", ppo=False),
        "method=dpo",
        "method.epochs=1",
        "eval.lm_eval.tasks=[]",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "rlhf_bench", *single_args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads(next((tmp_path / "one" / "results" / "runs").glob("*/record.json")).read_text())
    assert record["cost"]["tokens_trained"] == reference["cost"]["tokens_trained"]  # summed over processes
    for who in ("sft", "policy"):
        for metric in ("gold_reward", "proxy_reward", "kl"):
            assert record["metrics"][who][metric] == pytest.approx(reference["metrics"][who][metric], abs=0.01)
