"""Train the tiny reward model with FSDP2 (ModelParallelStrategy) on 2 CPU processes through the lit-safe CLI.

Usage: python tests/scripts/fsdp2_reward.py OUT_DIR  (run by tests/modules/test_fsdp2.py; Lightning re-launches
this script for rank 1).
"""

import os
import sys
from pathlib import Path

import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from lit_safe.cli import run  # noqa: E402

out = Path(sys.argv[1]).resolve()
config = yaml.safe_load((REPO / "configs/quickstart/reward.yaml").read_text())
config["trainer"].update(yaml.safe_load((REPO / "configs/trainer/fsdp2_cpu.yaml").read_text())["trainer"])
config["trainer"].update({"max_epochs": 1, "max_steps": 30, "limit_val_batches": 2, "log_every_n_steps": 5,
                          "enable_progress_bar": False})
config["trainer"]["logger"]["init_args"]["save_dir"] = str(out / "tb")
config["trainer"]["callbacks"] = [
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"dirpath": str(out / "ckpt"), "save_last": True, "save_top_k": 0}},
    {"class_path": "lit_safe.callbacks.export.ExportPretrained", "init_args": {"dirpath": str(out / "hf")}},
    {"class_path": "fsdp2_probe.ShardProbe", "init_args": {"out_dir": str(out)}},
]
config["model"]["init_args"]["optimizer"]["lr"] = 0.003
config["data"]["init_args"].update({"synthetic_rows": 800, "num_workers": 0, "prepared_dir": str(out / "prepared")})
out.mkdir(parents=True, exist_ok=True)
(out / "config.yaml").write_text(yaml.safe_dump(config))
run(["fit", "--config", str(out / "config.yaml")])
