"""Object storage for real: an S3-compatible server (moto's, on 127.0.0.1 only) holds the prepared data.

- ``prepared_dir: s3://bucket/prepared`` prepares locally, uploads (manifest last) and leaves no staging copy; the
  same settings again reuse the upload (nothing read, tokenised or written);
- ``source: s3://...`` streams exactly the batches, in the same order, of the same preparation on local disk, with
  the endpoint from the ``AWS_*`` environment variables or from ``storage_options``;
- a reward model trained from S3, killed mid-epoch and resumed ends with the same weights, bit for bit, as an
  uninterrupted run from S3 and as one from local disk;
- a URL without a manifest, a truncated chunk or an ``index.json`` asking for ``pickle`` is refused, naming it; a
  damaged own upload is prepared and uploaded again.
"""

import hashlib
import json
import socket
from dataclasses import replace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from lit_safe.data_modules import base as base_module  # noqa: E402
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule  # noqa: E402
from lit_safe.data_modules.preparation import PreparedDatasetError  # noqa: E402
from lit_safe.modules.reward import DEFAULT_OPTIMIZER, RewardModule  # noqa: E402

BUCKET = "bucket"
PREPARED = f"s3://{BUCKET}/prepared"
KEY, SECRET, REGION = "testing", "testing", "us-east-1"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port with one bucket; the AWS_* variables point at it (and at nothing
    else: no profile, no ~/.aws), lit_safe's and litdata's caches are temporary. Yields ``(endpoint, client)``."""
    import litdata.utilities.dataset_utilities as dataset_utilities

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        tmp = tmp_path_factory.mktemp("s3")
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                patch.delenv(name, raising=False)
            patch.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
            patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))
            patch.setenv("AWS_ACCESS_KEY_ID", KEY)
            patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            patch.setenv("AWS_DEFAULT_REGION", REGION)
            patch.setenv("AWS_ENDPOINT_URL", endpoint)
            patch.setenv("LIT_SAFE_CACHE", str(tmp / "lit_safe"))
            patch.setattr(dataset_utilities, "_LITDATA_CACHE_DIR", str(tmp / "litdata"))
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            yield endpoint, client
    finally:
        server.stop()


def _module(**kwargs) -> PKUSafeRLHFDataModule:
    settings = {"tokenizer": "tiny", "source": "synthetic", "synthetic_rows": 300, "prepared_dir": PREPARED,
                "num_workers": 0, "batch_size": 8, "group_size": 4}
    return PKUSafeRLHFDataModule(**{**settings, **kwargs})


def _objects(client, url: str) -> dict[str, tuple[int, str]]:
    """``{path under url: (bytes, etag)}``."""
    prefix = url.split(f"s3://{BUCKET}/", 1)[1].rstrip("/") + "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):]: (o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])}


def _copy(client, url: str, name: str) -> str:
    """A copy of the prepared dataset at ``url`` under ``s3://bucket/<name>``."""
    source = url.split(f"s3://{BUCKET}/", 1)[1]
    for path in _objects(client, url):
        client.copy_object(Bucket=BUCKET, Key=f"{name}/{path}",
                           CopySource={"Bucket": BUCKET, "Key": f"{source}/{path}"})
    return f"s3://{BUCKET}/{name}"


def _get(client, url: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=url.split(f"s3://{BUCKET}/", 1)[1])["Body"].read()


def _put(client, url: str, data: bytes) -> None:
    client.put_object(Bucket=BUCKET, Key=url.split(f"s3://{BUCKET}/", 1)[1], Body=data)


def _batches(dm: PKUSafeRLHFDataModule, split: str = "train", epochs: int = 1) -> list[dict]:
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return [batch for _ in range(epochs) for batch in loader]


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.fixture(scope="module")
def uploaded(s3):
    """The synthetic preference view prepared into the bucket: ``(data module, its report, its URL)``."""
    dm = _module()
    report = dm.prepare()
    return dm, report, dm.prepared_location()


# ------------------------------------------------------------------------------------------ prepare and reuse
def test_prepare_into_a_bucket_uploads_everything_manifest_included_and_no_staging_copy_is_left(s3, uploaded):
    _, client = s3
    dm, report, url = uploaded
    assert url.startswith(f"{PREPARED}/pku_saferlhf-preference-")
    objects = _objects(client, url)
    manifest = json.loads(_get(client, f"{url}/manifest.json"))
    listed = {"report.json", "meta.json"} | {f"{split}/index.json" for split in manifest["splits"]} | {
        f"{split}/{name}" for split, entry in manifest["splits"].items() for name in entry["chunks"]}
    assert set(objects) == listed | {"manifest.json"}
    assert set(manifest["splits"]) == {"train", "val", "test"}
    for split, entry in manifest["splits"].items():
        for name, record in entry["chunks"].items():
            assert objects[f"{split}/{name}"][0] == record["bytes"]
    assert json.loads(_get(client, f"{url}/report.json")) == report.to_dict()
    assert report.output_dir == url and not report.reused
    assert report.splits["train"].kept > 250
    assert not any(p.is_file() for p in dm.prepared_root.rglob("*")), "the staging copy was left behind"


def test_the_same_settings_reuse_the_upload_without_reading_or_writing(s3, uploaded, monkeypatch, capsys):
    _, client = s3
    _, report, url = uploaded
    before = _objects(client, url)

    def fail(*args, **kwargs):
        raise AssertionError("the reused preparation was read, prepared or uploaded again")

    monkeypatch.setattr(PKUSafeRLHFDataModule, "_read", fail)
    monkeypatch.setattr(base_module, "upload_prepared", fail)
    again = _module()
    assert again.prepared_location() == url
    reused = again.prepare()
    assert reused.reused and reused.to_dict() == report.to_dict()
    assert "Reusing an identical earlier preparation" in capsys.readouterr().out
    assert _objects(client, url) == before
    assert again.label_summary() == uploaded[0].label_summary()  # meta.json, read from the bucket


# ------------------------------------------------------------------------------------------------- streaming
def test_s3_streams_the_same_batches_as_local_disk(s3, uploaded, tmp_path, monkeypatch):
    endpoint, _ = s3
    _, _, url = uploaded
    local = _module(prepared_dir=str(tmp_path / "local"))
    expected = _batches(local, epochs=2)
    _assert_same_batches(_batches(_module(source=url, prepared_dir=str(tmp_path / "unused")), epochs=2), expected)
    _assert_same_batches(_batches(_module(), epochs=2), expected)  # the module that prepares into the bucket
    _assert_same_batches(_batches(_module(source=url), "val"), _batches(local, "val"))

    # the endpoint and credentials as storage_options instead of the environment
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": endpoint, "aws_access_key_id": KEY, "aws_secret_access_key": SECRET,
               "region_name": REGION}
    with_options = _module(source=url, prepared_dir=str(tmp_path / "unused"), storage_options=options)
    assert "storage_options" not in with_options.hparams  # credentials stay out of checkpoints
    _assert_same_batches(_batches(with_options), expected[: len(expected) // 2])


def test_a_url_without_a_manifest_is_refused_naming_it(s3, uploaded, tmp_path):
    _, client = s3
    missing = f"s3://{BUCKET}/prepared/nothing-here"
    with pytest.raises(PreparedDatasetError, match=f"{missing}/manifest.json: not found"):
        _module(source=missing).prepare_data()
    half = _copy(client, uploaded[2], "half-upload")  # an upload that stopped before its manifest
    client.delete_object(Bucket=BUCKET, Key="half-upload/manifest.json")
    dm = _module(source=half)
    with pytest.raises(PreparedDatasetError, match=f"{half}/manifest.json: not found"):
        dm.setup("fit")
        dm.train_dataloader()


def test_an_unreachable_endpoint_is_an_error_naming_the_url_not_a_new_preparation(s3, tmp_path):
    import botocore.config

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = {"endpoint_url": closed, "config": botocore.config.Config(retries={"max_attempts": 1})}
    dm = _module(storage_options=options)
    with pytest.raises(PreparedDatasetError, match=rf"{PREPARED}/pku_saferlhf-preference-\w+/manifest.json: "
                                                   r"EndpointConnectionError: .*check the endpoint"):
        dm.prepare()
    assert not any(dm.prepared_root.rglob("*")), "prepared although the store could not be reached"


def test_a_truncated_chunk_or_a_pickle_index_in_the_bucket_is_refused(s3, uploaded):
    _, client = s3
    url = uploaded[2]
    manifest = json.loads(_get(client, f"{url}/manifest.json"))
    chunk = sorted(manifest["splits"]["train"]["chunks"])[0]

    truncated = _copy(client, url, "truncated")
    _put(client, f"{truncated}/train/{chunk}", _get(client, f"{url}/train/{chunk}")[:-10])
    with pytest.raises(PreparedDatasetError, match=f"{truncated}/train/{chunk}: .* bytes, manifest.json says"):
        _module(source=truncated).prepare_data()

    # a crafted index (and a manifest forged to match it: anyone can write one) asking for pickle
    crafted = _copy(client, url, "crafted")
    index = json.loads(_get(client, f"{url}/train/index.json"))
    index["config"]["data_format"] = ["pickle" for _ in index["config"]["data_format"]]
    data = json.dumps(index).encode()
    _put(client, f"{crafted}/train/index.json", data)
    manifest["splits"]["train"]["index"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _put(client, f"{crafted}/manifest.json", json.dumps(manifest).encode())
    dm = _module(source=crafted)
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(PreparedDatasetError, match=r"crafted/train/index\.json: refusing to load items stored with"):
        dm.train_dataloader()

    # the same index without a forged manifest: it is not the one the manifest describes
    altered = _copy(client, url, "altered")
    _put(client, f"{altered}/train/index.json", data)
    dm = _module(source=altered)
    with pytest.raises(PreparedDatasetError, match=r"altered/train/index\.json: .* bytes, manifest.json says"):
        dm.prepare_data()


def test_a_damaged_own_upload_is_prepared_and_uploaded_again(s3, capsys):
    _, client = s3
    first = _module(synthetic_rows=64)
    first.prepare()
    url = first.prepared_location()
    manifest = json.loads(_get(client, f"{url}/manifest.json"))
    chunk = sorted(manifest["splits"]["train"]["chunks"])[0]
    _put(client, f"{url}/train/{chunk}", b"damaged")
    capsys.readouterr()
    again = _module(synthetic_rows=64)
    report = again.prepare()
    assert "Preparing again: the earlier preparation is damaged" in capsys.readouterr().out
    assert not report.reused
    assert _objects(client, url)[f"train/{chunk}"][0] == manifest["splits"]["train"]["chunks"][chunk]["bytes"]
    assert sum(len(b["row"]) for b in _batches(_module(synthetic_rows=64))) == report.splits["train"].kept


# ---------------------------------------------------------------------------------------------- exact resume
class RowRecorder(Callback):
    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows += batch["row"].tolist()


class KillAt(Callback):
    """Stops the run after a given step, as a crash would (the config, and so the LR schedule, stay the same)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


STEPS, KILL = 10, 6  # the kill falls inside the second length-grouping pool of 4 batches


def _fit(root, data: PKUSafeRLHFDataModule, kill_at: int | None = None, ckpt_path=None):
    L.seed_everything(7)
    model = RewardModule(backbone="tiny", optimizer=replace(DEFAULT_OPTIMIZER, lr=2e-3, warmup_ratio=0.1))
    recorder = RowRecorder()
    callbacks = [recorder]
    if kill_at:
        callbacks += [KillAt(kill_at), ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=kill_at,
                                                       save_top_k=-1, filename="{step}")]
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=root)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, recorder.rows, trainer


def test_training_from_s3_resumes_mid_epoch_bit_for_bit(s3, uploaded, tmp_path):
    url = uploaded[2]
    full_model, full_rows, full_trainer = _fit(tmp_path / "full", _module(source=url))
    assert full_trainer.global_step == STEPS < full_trainer.num_training_batches  # all inside the first epoch

    _, first_rows, _ = _fit(tmp_path / "cut", _module(), kill_at=KILL)
    ckpt = tmp_path / "cut" / "ckpt" / f"step={KILL}.ckpt"
    assert ckpt.is_file()
    resumed_model, rest_rows, resumed_trainer = _fit(tmp_path / "cut", _module(), ckpt_path=str(ckpt))
    assert first_rows + rest_rows == full_rows  # the same batches, in the same order, none repeated or lost
    assert resumed_trainer.global_step == STEPS

    local_model, local_rows, _ = _fit(tmp_path / "local", _module(prepared_dir=str(tmp_path / "prepared")))
    assert local_rows == full_rows
    for (name, a), (_, b), (_, c) in zip(full_model.model.named_parameters(), resumed_model.model.named_parameters(),
                                         local_model.model.named_parameters()):
        assert torch.equal(a, b), f"{name}: the resumed run differs"
        assert torch.equal(a, c), f"{name}: the run from local disk differs"
