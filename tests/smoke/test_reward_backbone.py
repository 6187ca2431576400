"""reward_model.backbone: a reward model on a backbone of its own size (the policy's tiny
architecture and tokenizer, SFT-trained on the same demonstrations as a cached stage), as Gao et
al. 2022 vary the proxy's size apart from the policy's. Every reward-model option composes with
it, bad values name the key, the stage hashes of reward models without it are unchanged, and a
run builds, records and reuses its stages."""

import json

import pytest


def test_backbone_option_composes_and_refuses_bad_values():
    from rlhf_bench.cli import load_config
    from rlhf_bench.errors import ConfigError

    for option in ("bradley_terry", "margin", "ensemble"):
        cfg = load_config(
            [f"reward_model={option}", "reward_model.backbone.n_layer=2", "reward_model.backbone.d_model=32"]
        )
        assert (cfg.reward_model.backbone.n_layer, cfg.reward_model.backbone.d_model) == (2, 32)
        assert cfg.reward_model.backbone.enabled
    assert not load_config([]).reward_model.backbone.enabled  # default: the SFT policy's backbone
    with pytest.raises(ConfigError, match=r"reward_model.backbone.d_model must be a positive multiple of .*n_head=2"):
        load_config(["reward_model.backbone.n_layer=1", "reward_model.backbone.d_model=33"])
    with pytest.raises(ConfigError, match="reward_model.backbone.n_layer must be >= 0"):
        load_config(["reward_model.backbone.n_layer=-1"])


def test_backbone_needs_the_tiny_model_and_sft(tmp_path):
    import torch

    from rlhf_bench import pipeline
    from rlhf_bench.cli import load_config
    from rlhf_bench.errors import ConfigError
    from rlhf_bench.run import Run

    def ctx(*overrides):
        cfg = load_config([f"paths.artifacts_dir={tmp_path}", "reward_model.backbone.n_layer=1", *overrides])
        return Run(cfg=cfg, task=None, tokenizer=None, device=torch.device("cpu"), dtype=None, tracker=None)

    with pytest.raises(ConfigError, match=r"reward_model.backbone needs sft.steps > 0"):
        pipeline.reward_backbone_stage(ctx("sft.steps=0"), {})
    with pytest.raises(ConfigError, match=r"reward_model.backbone needs the tiny policy model"):
        pipeline.reward_backbone_stage(ctx("model=gpt2"), {})
    assert not list(tmp_path.iterdir())  # refused before building anything


def test_backbone_changes_the_reward_model_hash_only_when_on():
    from rlhf_bench.cli import load_config
    from rlhf_bench.pipeline import rm_key, to_plain

    default = load_config([]).reward_model
    assert "backbone" not in rm_key(default)  # the hashes of existing reward models are unchanged
    assert rm_key(default) == {k: v for k, v in to_plain(default).items() if k != "backbone"}
    on = load_config(["reward_model.backbone.n_layer=1"]).reward_model
    assert rm_key(on)["backbone"] == {"n_layer": 1, "d_model": 64, "n_head": 2}


@pytest.mark.slow
def test_a_run_trains_the_reward_model_on_its_own_backbone(tmp_path):
    from safetensors import safe_open

    from rlhf_bench import pipeline
    from rlhf_bench.cli import load_config

    world = [
        "task=toy",
        "task.alphabet=4",
        "task.response_length=4",
        "task.n_prompts=4",
        "task.n_sft=500",
        "model.tiny.n_layer=2",
        "model.tiny.d_model=32",
        "model.tiny.n_head=2",
        "sft.steps=20",
        "sft.batch_size=32",
        "preferences.n_eval=32",
        "reward_model.epochs=1",
        "reward_model.n_normalization_samples=32",
        "reward_model.min_gold_accuracy=0",
        "method=sft",
        "eval.n_prompts=8",
        "eval.exact=false",  # only the stages matter here: no enumeration of every response
        "eval.lm_eval.tasks=[]",
        "logger.mode=disabled",
        "device=cpu",
        f"paths.results_dir={tmp_path}/results",
        f"paths.artifacts_dir={tmp_path}/artifacts",
        "reward_model.backbone.n_layer=1",
        "reward_model.backbone.d_model=16",
    ]
    record = pipeline.run(load_config([*world, "preferences.n_train=32"]))
    assert record["status"] == "finished"
    assert "exact_kl" not in record["metrics"]["sft"] and "frontier" not in record["metrics"]
    backbone = record["artifacts"]["reward_backbone"]
    assert not backbone["cached"] and "reward_backbone" in record["history"]  # its own SFT loop, logged apart

    def shapes(folder):
        with safe_open(str(next(folder.glob("*.safetensors"))), framework="pt") as fh:
            return {k: fh.get_slice(k).get_shape() for k in fh.keys()}  # noqa: SIM118

    rm = shapes(tmp_path / "artifacts" / "reward_model" / record["artifacts"]["reward_model"]["hash"])
    policy = shapes(tmp_path / "artifacts" / "sft" / record["artifacts"]["sft"]["hash"])
    assert {s[-1] for k, s in rm.items() if k.endswith("wte.weight")} == {16}  # 1 layer x 16, not the policy's
    assert sum(".h." in k for k in rm) < sum(".h." in k for k in policy)
    assert (
        json.loads(
            (
                tmp_path / "artifacts" / "reward_model" / record["artifacts"]["reward_model"]["hash"] / "stage.json"
            ).read_text()
        )["key"]["backbone"]
        == backbone["hash"]
    )
    # more pairs: a new reward model on the same (cached) backbone
    again = pipeline.run(load_config([*world, "preferences.n_train=48"]))
    assert (
        again["artifacts"]["reward_backbone"]["cached"]
        and again["artifacts"]["reward_backbone"]["hash"] == backbone["hash"]
    )
    assert again["artifacts"]["reward_model"]["hash"] != record["artifacts"]["reward_model"]["hash"]
