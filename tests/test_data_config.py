"""DataConfig: one home for the data's options, through YAML, checkpoints and every command's flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from unetkit.checkpoint import checkpoint_data_config, read_checkpoint
from unetkit.cli.main import build_parser, main
from unetkit.data import DataConfig
from unetkit.data.config import FLAG_NAMES, field_names
from unetkit.train import TrainConfig

CUSTOM = DataConfig(source="shapes", num_classes=3, in_channels=1, val_fraction=0.3, split_seed=7,
                    options={"num_samples": 8, "val_samples": 3, "size": 32})


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_round_trip_through_dict_and_yaml(tmp_path):
    assert DataConfig.from_dict(CUSTOM.to_dict()) == CUSTOM
    vol = DataConfig(source="ct", context=2, slice_axis=1, spacing=(0.5, 0.7), binary=True, cache=False)
    assert DataConfig.from_dict(vol.to_dict()) == vol
    cfg = TrainConfig(data=CUSTOM, epochs=1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert TrainConfig.from_yaml(path).data == CUSTOM
    assert yaml.safe_load(path.read_text())["data"]["split_seed"] == 7  # nested once, under data:


def test_configs_of_earlier_versions_read_the_same():
    flat = {"data": "shapes", "num_classes": 3, "in_channels": 1, "val_fraction": 0.3, "split_seed": 7,
            "data_options": {"num_samples": 8, "val_samples": 3, "size": 32}}
    assert TrainConfig.from_dict(flat).data == CUSTOM
    assert TrainConfig(data="shapes").data == DataConfig(source="shapes")
    with pytest.raises(ValueError, match="unknown data option.*slices"):
        DataConfig.from_dict({"source": "x", "slices": 3})
    with pytest.raises(ValueError, match="val_fraction must be in"):
        TrainConfig.from_dict({"data": {"source": "x", "val_fraction": 1.5}})


def test_every_data_option_is_a_flag_of_train_plan_evaluate_and_export():
    names = [n for n in field_names() if n != "options"]
    assert len(names) == 11
    for command in ("train", "plan", "evaluate", "export"):
        flags = {s for a in _subparser(command)._actions for s in a.option_strings}
        missing = [n for n in names if "--" + FLAG_NAMES.get(n, n).replace("_", "-") not in flags]
        assert not missing, f"{command} lacks {missing}"


def test_flags_build_the_same_config(tmp_path):
    from unetkit.cli.train import config_from_args

    args = _subparser("train").parse_args(
        ["--data", "shapes", "--num-classes", "3", "--in-channels", "1", "--val-fraction", "0.3",
         "--split-seed", "7"])
    got = config_from_args(args).data
    assert dataclasses.replace(got, options=CUSTOM.options) == CUSTOM
    # a YAML file's data options survive a flag that only names the source
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"source": "x", "val_fraction": 0.1, "split_seed": 3}}))
    args = _subparser("train").parse_args(["--config", str(base), "--data", "shapes"])
    got = config_from_args(args).data
    assert (got.source, got.val_fraction, got.split_seed) == ("shapes", 0.1, 3)


def test_a_checkpoint_stores_the_data_config_once(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "shapes", "--num-classes", "3", "--in-channels", "1", "--val-fraction", "0.3",
                 "--split-seed", "7", "--epochs", "1", "--base-channels", "4", "--depth", "2", "--samples", "0",
                 "--no-boundary-f1", "--out", str(out), "--quiet", "--config", str(_options_yaml(tmp_path))]) == 0
    ckpt = read_checkpoint(out / "best.pt")
    assert checkpoint_data_config(ckpt) == CUSTOM
    assert "data" not in ckpt and ckpt["classes"]["names"][0] == "background"
    # patch size and channels: once each (the plan's patch, the model's channels)
    assert ckpt["config"]["patch_size"] is None and ckpt["config"]["data"]["in_channels"] == 1
    assert ckpt["model_config"]["in_channels"] == 1 and ckpt["plan"]["patch_size"] == [32, 32]
    assert "optimizer" not in ckpt  # best.pt: what evaluate, predict and export need
    assert "optimizer" in read_checkpoint(out / "last.pt")  # last.pt: what --resume needs


def _options_yaml(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text(yaml.safe_dump({"data": {"options": dict(CUSTOM.options)}}))
    return path
