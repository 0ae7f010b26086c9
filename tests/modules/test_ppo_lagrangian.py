"""PPO-Lagrangian through the lit-safe command line on tiny saved models: rollouts, several PPO epochs over
minibatches, the Lagrange multiplier's update from the logged episode costs, a checkpoint with lambda, and the
PPOSamples callback's table of rollouts."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_safe.cli import run
from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import ScoreModel
from lit_safe.modules.ppo_lagrangian import PPOLagrangianModule, response_masks

REPO = Path(__file__).resolve().parents[2]


def test_response_masks_stop_at_the_first_eos_and_shift_actions_by_one():
    eos, pad = 2, 0
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    sequences = torch.tensor([[pad, 5, 6, 7, eos, pad, pad], [4, 5, 6, 7, 8, 9, eos]])
    attention, actions = response_masks(sequences, prompt_mask, eos)
    assert attention.tolist() == [[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    # action t generates token t + 1: responses start at token 3, so at action 2
    assert actions.long().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    # a pad token equal to EOS: everything after the first EOS is padding all the same
    attention, actions = response_masks(torch.tensor([[1, 1, 5, eos, eos, eos]]), torch.tensor([[1, 1]]), eos)
    assert attention.tolist() == [[1, 1, 1, 1, 0, 0]] and actions.long().tolist() == [[0, 1, 1, 0, 0]]



def test_response_masks_end_a_response_at_any_stop_id():
    eos, eot, pad = 2, 9, 0
    prompt_mask = torch.tensor([[1, 1], [1, 1], [1, 1]])
    sequences = torch.tensor([[4, 5, 6, eot, 7, pad], [4, 5, eos, 6, eot, pad], [4, 5, 6, 7, 8, 3]])
    attention, actions = response_masks(sequences, prompt_mask, [eos, eot])
    assert attention.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert actions.long().tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 1]]
    # with EOS alone, the end-of-turn id is an ordinary token
    assert response_masks(sequences[:1], prompt_mask[:1], eos)[0].tolist() == [[1, 1, 1, 1, 1, 1]]


@pytest.fixture(scope="module")
def tiny_models(tiny_ppo_models):
    return tiny_ppo_models(cost_bias=3.0)  # every answer unsafe: lambda must rise


SAMPLES = "lit_safe.callbacks.samples.PPOSamples"


def ppo_config(tmp, models, samples: dict | None = None, **model_args) -> str:
    """The quickstart config on the tiny models, 2 rollouts; ``samples``: the PPOSamples callback's arguments
    (``None``: without the callback)."""
    config = yaml.safe_load((REPO / "configs/quickstart/ppo_lagrangian.yaml").read_text())
    config["trainer"].update({"max_steps": 8, "enable_progress_bar": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    callbacks = config["trainer"]["callbacks"]
    callbacks[0]["init_args"].update({"dirpath": str(tmp / "ckpt"), "every_n_train_steps": 4})
    callbacks[1]["init_args"]["dirpath"] = str(tmp / "actor_out")
    config["trainer"]["callbacks"] = [c for c in callbacks if c["class_path"] != SAMPLES]
    if samples is not None:
        config["trainer"]["callbacks"].append({"class_path": SAMPLES, "init_args": samples})
    config["model"]["init_args"].update({"backbone": str(models / "actor"), "reward_model": str(models / "reward"),
                                         "cost_model": str(models / "cost"), "max_new_tokens": 8, **model_args})
    config["data"]["init_args"].update({"tokenizer": str(models / "actor"), "synthetic_rows": 80, "batch_size": 4,
                                        "num_workers": 0, "prepared_dir": str(tmp / "prepared")})
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "ppo.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_ppo_lagrangian_updates_actor_critics_and_lambda(tiny_models, tmp_path):
    config = ppo_config(tmp_path, tiny_models)
    cli = run(["fit", "--config", config])
    module = cli.model
    # 8 actor updates = 2 rollouts x 2 PPO epochs x 2 minibatches
    assert cli.trainer.global_step == 8 and module.rollouts_done == 2
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent)).Reload()
    episode_cost = [e.value for e in acc.Scalars("train/episode_cost")]
    lam = [e.value for e in acc.Scalars("train/lambda")]
    assert len(episode_cost) == 2 and all(c > 0 for c in episode_cost)  # the cost model calls everything unsafe
    # log lambda moves by lr * lambda * (window cost - threshold) per rollout, from log 1 = 0
    expected = 0.0
    for cost in episode_cost:
        expected += 0.1 * math.exp(expected) * cost
        expected = min(expected, math.log(5.0))
    assert math.log(lam[-1]) == pytest.approx(expected, rel=1e-4)
    assert lam[-1] > 1.0
    for tag in ("train/reward", "train/cost", "train/kl", "train/actor_loss", "train/reward_critic_loss",
                "train/cost_critic_loss", "train/clip_fraction", "train/advantage", "train/mean_generated_length"):
        assert tag in acc.Tags()["scalars"], tag
    # the checkpoint carries lambda and the episode-cost window
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert math.exp(float(state["state_dict"]["log_lambda"])) == pytest.approx(lam[-1], rel=1e-5)
    assert len(state["ppo_state"]["episode_costs"]) == 8 and state["ppo_state"]["rollouts_done"] == 2
    # the exported actor moved away from its initial weights
    from safetensors.torch import load_file

    before, after = load_file(tiny_models / "actor" / "model.safetensors"), load_file(tmp_path / "actor_out" /
                                                                                      "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_actor_follows_the_lambda_moved_by_its_own_rollout(tiny_models, tmp_path, monkeypatch):
    """Reference order: lambda moves on the window that holds this rollout's costs, then the advantages are combined
    with the new lambda (not the one from before the step)."""
    import lit_safe.modules.ppo_lagrangian as ppo

    used, combine = [], ppo.combined_advantage

    def spy(reward_advantages, cost_advantages, lagrange):
        used.append(float(lagrange))
        return combine(reward_advantages, cost_advantages, lagrange)

    monkeypatch.setattr(ppo, "combined_advantage", spy)
    cli = run(["fit", "--config", ppo_config(tmp_path, tiny_models)])
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    lam = [e.value for e in EventAccumulator(str(events[-1].parent)).Reload().Scalars("train/lambda")]
    assert len(used) == 2 and lam[0] > 1.0  # lambda_init 1 moved up by the unsafe first rollout
    assert used == pytest.approx(lam, rel=1e-6)
    assert used[-1] == pytest.approx(math.exp(float(cli.model.log_lambda)), rel=1e-6)


def test_the_actor_schedule_is_sized_from_its_real_optimizer_steps(tiny_models, tmp_path):
    """max_steps 8 = 2 rollouts x 2 epochs x 2 minibatches: the cosine schedule spans those 8 actor updates and ends
    at 0 (it was sized for 32 and ended at 0.85 of the peak); the critics keep their constant learning rate."""
    cli = run(["fit", "--config", ppo_config(tmp_path, tiny_models, warmup_ratio=0.0)])
    assert cli.trainer.global_step == 8
    actor, reward_critic, cost_critic, _ = cli.model.optimizers(use_pl_optimizer=False)
    assert cli.model.lr_schedulers().last_epoch == 8
    assert actor.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    for critic in (reward_critic, cost_critic):
        assert critic.param_groups[0]["lr"] == cli.model.hparams.critic_lr


def test_a_shared_critic_gives_both_values_from_one_backbone(tiny_models, tmp_path):
    from lit_safe.models.score_model import SharedCritic

    cli = run(["fit", "--config", ppo_config(tmp_path, tiny_models, shared_critic=True)])
    module = cli.model
    assert isinstance(module.reward_critic, SharedCritic) and module.cost_critic is None
    assert len(module.optimizers(use_pl_optimizer=False)) == 3  # actor, the shared critic, lambda
    start = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    head = module.reward_critic.cost_head.weight
    assert head.shape == (1, module.reward_critic.critic.backbone.config.hidden_size)
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent)).Reload()
    assert len(acc.Scalars("train/cost_critic_loss")) == 2 and len(acc.Scalars("train/reward_critic_loss")) == 2
    assert acc.Scalars("train/lambda")[-1].value > 1.0
    # the cost head and the shared backbone were trained (the reward critic started from the reward model)
    initial = dict(ScoreModel.from_pretrained(str(tiny_models / "reward")).backbone.named_parameters())
    trained = dict(module.reward_critic.critic.backbone.named_parameters())
    assert initial.keys() == trained.keys() and any(not torch.equal(initial[k], trained[k]) for k in initial)
    critic_state = module.optimizers(use_pl_optimizer=False)[1].state
    assert float(critic_state[head]["exp_avg"].abs().sum()) > 0  # the cost head got gradients and steps
    assert torch.equal(start["reward_critic.cost_head.weight"], head.detach())  # and is checkpointed
    with pytest.raises(ValueError, match="shared_critic puts the cost values on a second head"):
        PPOLagrangianModule(backbone=str(tiny_models / "actor"), reward_model=str(tiny_models / "reward"),
                            cost_model=str(tiny_models / "cost"), shared_critic=True,
                            cost_critic=str(tiny_models / "cost"))


def test_a_lora_reference_is_the_policy_with_its_adapters_off(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    cli = run(["fit", "--config", ppo_config(tmp_path, tiny_models, reference="lora", lora_rank=4, lora_alpha=8.0)])
    module = cli.model
    assert module.reference is None and module.lora_scaling == 2.0
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    kl = [e.value for e in EventAccumulator(str(events[-1].parent)).Reload().Scalars("train/kl")]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] != 0.0  # B starts at 0: the first rollout has no KL
    # the base weights stay the initial policy's; the export folds the adapters in and loads without peft
    initial = AutoModelForCausalLM.from_pretrained(tiny_models / "actor")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "actor_out")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        adapted = module.model(input_ids=ids).logits
        from lit_safe.models.lora import adapters_disabled

        with adapters_disabled(module.model):
            base = module.model(input_ids=ids).logits
        torch.testing.assert_close(base, initial(input_ids=ids).logits)
        torch.testing.assert_close(exported(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(adapted, base)


def test_with_one_minibatch_the_first_update_estimates_the_rollout_with_its_own_forward_passes(
        tiny_models, tmp_path, monkeypatch):
    """num_minibatches 1: the rollout runs no actor or critic pass; the first update's passes (with gradient) give
    the old log-probs and the values, equal to separate passes over the same sequences before any step."""
    import lit_safe.modules.ppo_lagrangian as ppo

    checked, update = [], ppo.PPOLagrangianModule._update

    def spy(self, mb, log_probs, values, *rest):
        if log_probs is not None:  # the first update of a rollout
            assert log_probs.requires_grad and all(v.requires_grad for v in values.values())
            with torch.no_grad():
                torch.testing.assert_close(mb.old_log_probs, self._log_probs(self.model, mb))
                for name, separate in self._critic_values(mb).items():
                    torch.testing.assert_close(getattr(mb, f"{name}_values"), separate)
                torch.testing.assert_close(mb.kl, mb.old_log_probs - mb.reference_log_probs)
            checked.append(mb.old_log_probs.shape)
        return update(self, mb, log_probs, values, *rest)

    monkeypatch.setattr(ppo.PPOLagrangianModule, "_update", spy)
    cli = run(["fit", "--config", ppo_config(tmp_path, tiny_models, num_minibatches=1, ppo_epochs=2)])
    assert cli.trainer.global_step == 8 and len(checked) == 4  # 4 rollouts x 2 epochs of one minibatch
    assert checked[0] == (4, 8)  # 4 prompts, 8 response actions (max_new_tokens)


def test_plain_ppo_needs_no_cost_model_and_keeps_lambda(tiny_models, tmp_path):
    config = ppo_config(tmp_path, tiny_models, algorithm="ppo", cost_model=None)
    cli = run(["fit", "--config", config])
    assert cli.model.cost_model is None and cli.model.cost_critic is None
    assert float(cli.model.log_lambda) == 0.0


def test_plain_ppo_with_a_cost_model_logs_the_cost_but_ignores_it(tiny_models, tmp_path):
    cli = run(["fit", "--config", ppo_config(tmp_path, tiny_models, algorithm="ppo")])
    assert cli.model.cost_critic is None and float(cli.model.log_lambda) == 0.0  # lambda never moves
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    costs = [e.value for e in EventAccumulator(str(events[-1].parent)).Reload().Scalars("train/episode_cost")]
    assert len(costs) == 2 and all(c > 0 for c in costs)  # the cost model calls everything unsafe


def test_a_resumed_run_continues_with_the_saved_lambda_window_and_step(tiny_models, tmp_path):
    config = ppo_config(tmp_path, tiny_models)
    config_data = yaml.safe_load(open(config))
    config_data["trainer"]["callbacks"][0]["init_args"]["save_top_k"] = -1  # keep the step-4 checkpoint too
    Path(config).write_text(yaml.safe_dump(config_data))
    run(["fit", "--config", config])
    middle = next((tmp_path / "ckpt").glob("*step=4.ckpt"))  # after the first rollout ("killed" here)
    saved = torch.load(middle, weights_only=False)
    assert saved["global_step"] == 4 and saved["ppo_state"]["rollouts_done"] == 1

    resumed = run(["fit", "--config", config, "--ckpt_path", str(middle),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "resumed_runs")]).model
    assert resumed.trainer.global_step == 8 and resumed.rollouts_done == 2
    window = list(resumed.episode_costs)
    assert window[:4] == saved["ppo_state"]["episode_costs"] and len(window) == 8
    # one more lambda step from the saved value, on the mean of the whole window
    saved_log_lambda = float(saved["state_dict"]["log_lambda"])
    expected = saved_log_lambda + 0.1 * math.exp(saved_log_lambda) * (sum(window) / len(window))
    assert float(resumed.log_lambda) == pytest.approx(min(expected, math.log(5.0)), rel=1e-5)


def test_quickstart_config_logs_samples():
    config = yaml.safe_load((REPO / "configs/quickstart/ppo_lagrangian.yaml").read_text())
    assert SAMPLES in [c["class_path"] for c in config["trainer"]["callbacks"]]


def test_generated_samples_table_is_logged_and_changes_no_number(tiny_models, tmp_path):
    with_table = run(["fit", "--config", ppo_config(tmp_path / "a", tiny_models, {"every_n_rollouts": 1, "rows": 3})])
    events = sorted((tmp_path / "a" / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent)).Reload()
    tables = acc.Tensors("train/samples/text_summary")
    assert [t.step for t in tables] == [4, 8]  # one per rollout, at its last actor update
    text = tables[-1].tensor_proto.string_val[0].decode()
    rows = text.splitlines()[2:]
    assert len(rows) == 3 and all(row.count(" | ") >= 3 for row in rows)
    assert "BEGINNING OF CONVERSATION: USER:" in rows[0]  # the prompt, decoded from its left-padded ids
    # the table draws no random number: without the callback the run trains the same weights and lambda
    without = run(["fit", "--config", ppo_config(tmp_path / "b", tiny_models)])
    trained = with_table.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in without.model.state_dict().items())
    assert float(without.model.log_lambda) == float(with_table.model.log_lambda)
    events = sorted((tmp_path / "b" / "runs").rglob("events.out.tfevents.*"))
    assert "train/samples/text_summary" not in EventAccumulator(str(events[-1].parent)).Reload().Tags()["tensors"]


def test_score_models_with_another_tokenizer_read_decoded_text(tiny_models, tmp_path):
    """A reward model with its own tokenizer (the 4,096-token preset) scores the decoded, re-encoded responses, and
    the reward critic, which must read the actor's ids, starts from the actor instead of that reward model."""
    import re

    from lit_safe.models.text import encode_with_eos
    from lit_safe.models.tokenizer import load_tokenizer

    other = load_tokenizer("small")
    torch.manual_seed(5)
    reward = ScoreModel(load_backbone("tiny", other), score_type="reward")
    reward.save_pretrained(tmp_path / "other_reward", tokenizer=other)
    config = ppo_config(tmp_path, tiny_models, {"every_n_rollouts": 1, "rows": 4},
                        reward_model=str(tmp_path / "other_reward"))
    module = run(["fit", "--config", config]).model
    assert module.reward_critic.backbone.get_input_embeddings().num_embeddings == len(module.tokenizer)
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    table = EventAccumulator(str(events[-1].parent)).Reload().Tensors("train/samples/text_summary")[0]
    rows = table.tensor_proto.string_val[0].decode().splitlines()[2:]
    reward.eval()
    for row in rows:
        prompt, response, logged = re.match(r"\| (.*) \| (.*) \| (\S+) \| \S* \|$", row).groups()
        ids, _ = encode_with_eos(other, [prompt + response], 4096)
        with torch.no_grad():
            expected = reward(torch.as_tensor(ids[0])[None].long(), torch.ones(1, len(ids[0]))).end_scores
        assert float(logged) == pytest.approx(float(expected), abs=0.006)  # the table rounds to 2 decimals


def test_ptx_adds_the_sft_loss_of_a_second_stream_to_every_actor_step(tiny_models, tmp_path):
    config = ppo_config(tmp_path, tiny_models, ptx_coeff=16.0)
    data = yaml.safe_load(open(config))
    data["data"]["init_args"]["ptx"] = True
    Path(config).write_text(yaml.safe_dump(data))
    cli = run(["fit", "--config", config])
    assert cli.trainer.global_step == 8
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent)).Reload()
    ptx = [e.value for e in acc.Scalars("train/ptx_loss")]
    actor = [e.value for e in acc.Scalars("train/actor_loss")]
    assert len(ptx) == 2 and all(5.0 < p < 9.0 for p in ptx)  # an untrained tiny model: about log(2048) = 7.6
    assert all(a > 16.0 * 5.0 for a in actor)  # the logged actor loss includes ptx_coeff x the PTX loss


def test_ptx_needs_the_ptx_stream(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="ptx: true"):
        run(["fit", "--config", ppo_config(tmp_path, tiny_models, ptx_coeff=1.0)])
    from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule

    with pytest.raises(ValueError, match="needs view 'prompts'"):
        PKUSafeRLHFDataModule(tokenizer="tiny", view="sft", ptx=True, prepared_dir=str(tmp_path))
