import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import torch

# Tests run as a machine without the hub would: W&B offline, Hugging Face offline.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")
_connect = socket.socket.connect


def _guarded_connect(sock, address):
    """Loopback and Unix sockets only (W&B's local service); anything else is a test failure."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(address, tuple) and not str(host).startswith(_LOCAL):
        raise AssertionError(f"a test tried to reach the network: {address}")
    return _connect(sock, address)


socket.socket.connect = _guarded_connect


@pytest.fixture(autouse=True)
def _children_start_their_own_wandb_service():
    """An in-process ``wandb.init`` leaves its service's address in ``WANDB_SERVICE``; a command a
    later test launches would inherit it and share this worker's long-lived service, where a
    killed child's run id stays "in use" for good. Each command starts its own service, as it
    does from a shell."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny GPT-2 and its tokenizer, built from a config (no download)."""
    from rlhf_bench.config import TinyModelConfig
    from rlhf_bench.core import models
    from rlhf_bench.tasks.sentiment import SentimentTask, SentimentTaskConfig

    models.quiet_transformers()
    task = SentimentTask(SentimentTaskConfig(n_sft=500, n_train_prompts=64, n_eval_prompts=32))
    tok = models.train_tokenizer(task.sft_texts, 400)
    cfg = TinyModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=400, max_positions=64)
    model = models.build_tiny_model(cfg, tok, seed=0).eval()
    return model, tok


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """(the wheel built from this checkout, a folder it is installed in): built once per pytest run.
    A pure-Python wheel: unpacking it into a folder on PYTHONPATH installs it."""
    import subprocess
    import sys
    import zipfile

    from rlhf_bench.compose import conf_dir

    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(root / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=conf_dir().parent,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((root / "dist").glob("rlhf_bench-*.whl"))
    zipfile.ZipFile(wheel).extractall(root / "site")
    return wheel, root / "site"


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


# The exact toy world at its smallest (4 letters, 4 positions, 4 prompts: 256 responses a prompt) and
# a one-layer model: the budget of every end-to-end test on task=toy (add task=toy where the
# experiment does not set it, and the reward-model and method keys the test needs).
TOY_TINY = [
    "task.alphabet=4",
    "task.response_length=4",
    "task.n_prompts=4",
    "task.n_sft=500",
    "model.tiny.n_layer=1",
    "model.tiny.d_model=32",
    "model.tiny.n_head=2",
    "sft.steps=30",
    "sft.batch_size=32",
    "preferences.n_eval=64",
    "eval.n_prompts=16",
    "logger.mode=disabled",
    "device=cpu",
]

RM_FAST = ["reward_model.epochs=1", "reward_model.min_gold_accuracy=0", "reward_model.n_normalization_samples=64"]


# One artifacts folder for the whole pytest run: the cached stages (base model, SFT, pairs, reward
# model) that many tests share are built once. A test that needs a cold cache (kill and resume,
# cache invalidation, counting what a run built) passes shared=False and gets its own folder.
SHARED_ARTIFACTS = Path(tempfile.mkdtemp(prefix="rlhf-bench-test-artifacts-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist (``make test`` runs 2 workers), on the controller: every worker shares its folder;
    a stage two workers want at once is built by one while the other waits (the stage cache's lock)."""
    node.workerinput["rlhf_bench_artifacts"] = str(SHARED_ARTIFACTS)


def pytest_configure(config):
    global SHARED_ARTIFACTS
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller's folder, one thread (2 workers, 2 cores)
        shutil.rmtree(SHARED_ARTIFACTS, ignore_errors=True)
        SHARED_ARTIFACTS = Path(workerinput["rlhf_bench_artifacts"])
        os.environ["OMP_NUM_THREADS"] = "1"  # and the processes its tests start
        torch.set_num_threads(1)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers) cleans up
        shutil.rmtree(SHARED_ARTIFACTS, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_artifacts() -> Path:
    """The session's shared artifacts folder (``fast_overrides`` uses it unless told not to)."""
    return SHARED_ARTIFACTS


def fast_overrides(
    root, ppo: bool = True, reward_model: bool = True, shared: bool = True, lm_eval: bool = False
) -> list[str]:
    """Overrides for a run of every stage in seconds on a CPU; ``ppo`` and ``reward_model`` add the
    budgets of the default PPO and Bradley-Terry options (leave them out for other options).
    Results go under ``root``; artifacts to the session's shared folder (``shared=False``: under
    ``root``, a cold cache). lm-eval is off unless ``lm_eval`` (the tests that check it)."""
    artifacts = SHARED_ARTIFACTS if shared else Path(root) / "artifacts"
    return (
        [
            f"paths.results_dir={root}/results",
            f"paths.artifacts_dir={artifacts}",
            "task.n_sft=2000",
            "task.n_train_prompts=256",
            "task.n_eval_prompts=64",
            "task.max_response_tokens=12",
            "model.tiny.n_layer=2",
            "model.tiny.d_model=32",
            "model.tiny.n_head=2",
            "model.tiny.vocab_size=400",
            "sft.steps=40",
            "sft.batch_size=32",
            "preferences.n_train=128",
            "preferences.n_eval=64",
            "eval.n_prompts=32",
            "eval.lm_eval.limit=16",
            "device=cpu",
        ]
        + ([] if lm_eval else ["eval.lm_eval.tasks=[]"])
        + (
            ["method.steps=2", "method.prompts_per_step=16", "method.num_minibatches=2", "method.epochs=1"]
            if ppo
            else []
        )
        + (RM_FAST if reward_model else [])
    )


def pytest_collection_modifyitems(config, items):
    # RLHF_BENCH_GPU_TESTS_ON_CPU=1: the GPU tests run on the CPU (benchmarks/gpu_check.py --dry-run),
    # each checking the CPU's side of what it checks on CUDA (tests/system/test_gpu.py)
    if torch.cuda.is_available() or os.environ.get("RLHF_BENCH_GPU_TESTS_ON_CPU") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
