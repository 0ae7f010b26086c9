"""The sample callbacks' pure parts: a PPO rollout decoded into (prompt, response, reward, cost) rows and the
markdown table of them. The callbacks themselves run in tests/modules/test_ppo_lagrangian.py (the table of a fit)
and tests/modules/test_diffusion_dpo.py (filmstrips, GIF and mp4 files of a fit)."""

from types import SimpleNamespace

import pytest
import torch

from lit_safe.callbacks.samples import PPOSamples, VideoSamples, markdown_table, rollout_rows


class Letters:
    """A tokenizer whose token ``i`` is the letter ``chr(96 + i)``; 0 is padding, 1 is EOS (both special)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(96 + int(i)) for i in ids if int(i) > 1)


def test_rollout_rows_split_left_padded_prompts_from_responses():
    # row 0: one pad, prompt "cd", response "ef" then EOS and a pad; row 1: prompt "bcd", response "g"
    sequences = torch.tensor([[0, 3, 4, 5, 6, 1, 0], [2, 3, 4, 7, 1, 0, 0]])
    attention = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    rollout = SimpleNamespace(sequences=sequences, attention_mask=attention, prompt_length=3,
                              reward=torch.tensor([0.5, -1.25]), cost=None)
    assert rollout_rows(rollout, Letters(), 5) == [("cd", "ef", 0.5, None), ("bcd", "g", -1.25, None)]
    rollout.cost = torch.tensor([2.0, -3.0])
    assert rollout_rows(rollout, Letters(), 1) == [("cd", "ef", 0.5, 2.0)]


def test_markdown_table_escapes_cells_and_rounds_scores():
    table = markdown_table([("a|b", "line\nbreak", 0.123, None), ("p", "r", -1.0, 2.555)])
    assert table.splitlines() == ["| prompt | response | reward | cost |", "|---|---|---:|---:|",
                                  "| a\\|b | line break | 0.12 |  |", "| p | r | -1.00 | 2.56 |"]


def test_arguments_out_of_range_are_refused():
    with pytest.raises(ValueError, match="every_n_rollouts"):
        PPOSamples(every_n_rollouts=0)
    with pytest.raises(ValueError, match="every_n_steps"):
        VideoSamples(["a kite"], every_n_steps=0)
