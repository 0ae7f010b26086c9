"""The SFT trainer through the lit-safe command line: fit on the quickstart config, the loss falls on held-out
responses, and the export is a plain Hugging Face causal LM with the checkpoint's exact logits."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lit_safe.cli import run
from lit_safe.modules.sft import SFTModule


@pytest.fixture(scope="module")
def sft_fitted(tmp_path_factory, quickstart_config):
    tmp = tmp_path_factory.mktemp("sft_cli")
    config = quickstart_config("sft", tmp)
    return tmp, config, run(["fit", "--config", str(config)])


def test_sft_fit_lowers_the_held_out_loss(sft_fitted):
    tmp, _, cli = sft_fitted
    metrics = cli.trainer.callback_metrics
    # an untrained tiny model starts near log(2048) = 7.6 nats per token; one short epoch on 1,200 rows gets ~3.3
    assert float(metrics["val/loss"]) < 4.5
    assert float(metrics["val/perplexity"]) == pytest.approx(float(metrics["val/loss"].exp()), rel=1e-5)
    assert float(metrics["val/token_accuracy"]) > 0.3
    events = sorted((tmp / "runs").rglob("events.out.tfevents.*"))
    losses = [e.value for e in EventAccumulator(str(events[-1].parent)).Reload().Scalars("train/loss")]
    assert losses[0] > 6.0 and losses[-1] < 0.6 * losses[0]


def test_sft_export_is_a_causal_lm_with_the_checkpoint_logits(sft_fitted):
    tmp, _, _ = sft_fitted
    module = SFTModule.load_from_checkpoint(tmp / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    exported = AutoModelForCausalLM.from_pretrained(tmp / "sft_model").eval()
    batch = module.tokenizer(["BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:Mix flour."],
                             return_tensors="pt")
    with torch.no_grad():
        expected = module.model(**batch).logits
        got = exported(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (tmp / "sft_model" / "tokenizer.json").is_file()
