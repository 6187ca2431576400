"""The by-name loading path (what `model=gpt2` uses) on a model saved to a local folder."""

import pytest
import torch
from conftest import fast_overrides

from rlhf_bench import pipeline
from rlhf_bench.cli import load_config
from rlhf_bench.config import TinyModelConfig
from rlhf_bench.core import models
from rlhf_bench.tasks.sentiment import SentimentTask, SentimentTaskConfig


@pytest.fixture(scope="module")
def hub_style_folder(tmp_path_factory):
    """A GPT-2-style model whose tokenizer, like gpt2's, has no pad token."""
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hub_model")
    task = SentimentTask(SentimentTaskConfig(n_sft=1000, n_train_prompts=8, n_eval_prompts=8))
    trained = models.train_tokenizer(task.sft_texts, 400)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=trained.backend_tokenizer, eos_token=models.EOS, bos_token=models.EOS
    )
    model = models.build_tiny_model(TinyModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=400), tok, seed=0)
    models.save_pretrained(model, tok, folder)
    return folder


def test_load_by_path_sets_left_padding_and_pad_token(hub_style_folder):
    tok = models.load_tokenizer(str(hub_style_folder))
    assert tok.padding_side == "left"
    assert tok.pad_token_id == tok.eos_token_id  # gpt2 convention: pad with EOS
    lm = models.load_causal_lm(str(hub_style_folder), tok)
    assert lm.config.pad_token_id == tok.pad_token_id
    out = lm(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape[-1] == lm.config.vocab_size


def test_pipeline_runs_on_a_model_given_by_path(hub_style_folder, tmp_path):
    overrides = fast_overrides(tmp_path) + [
        "model=gpt2",  # the hub option, pointed at a local folder
        f"model.name_or_path={hub_style_folder}",
        "logger.mode=disabled",
    ]
    record = pipeline.run(load_config(overrides))
    assert record["status"] == "finished"
    assert record["model"] == "gpt2"
    assert "base" not in record["artifacts"]  # no tiny model was built
    assert record["artifacts"]["sft"]["info"]["steps"] == 40
    assert record["metrics"]["policy"]["kl"] != 0.0
