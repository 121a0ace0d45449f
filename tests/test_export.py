"""ONNX export (round trip, metadata), running exported models, static INT8 quantization on real data, and
the dynamic-quantization trap.

A tiny UNet is trained for a few dozen steps on the real ``ct-chest`` slices (module fixture), so the
INT8 checks run on a model that predicts anatomy, not on a constant or random map.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unetkit import UNet
from unetkit.checkpoint import CheckpointError, DataInfo, save_checkpoint
from unetkit.cli.main import main
from unetkit.inference import Predictor, predict

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from unetkit.export import (  # noqa: E402 - after the optional-dependency skips
    ExportError,
    OnnxModel,
    compare_onnx,
    export_onnx,
    onnx_metadata,
    ort_session,
    parse_metadata,
    quantize_int8,
    quantized_node_counts,
    read_onnx_metadata,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def ct():
    from unetkit.data import get_datasets

    train, val = get_datasets("ct-chest")
    return train, val


@pytest.fixture(scope="module")
def trained(ct):
    """UNet(8 classes, base 8, depth 3) after 40 Adam steps on ct-chest: mIoU ~0.3, lungs/tissue/background."""
    train, _ = ct
    torch.manual_seed(0)
    model = UNet(num_classes=8, in_channels=1, base_channels=8, depth=3)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randint(0, len(train), (8,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), DataInfo.from_dataset(train)


@pytest.fixture(scope="module")
def exported(trained, ct, tmp_path_factory):
    model, info = trained
    train, val = ct
    d = tmp_path_factory.mktemp("export")
    path = d / "model.onnx"
    diff = export_onnx(model, info, path, verbose=False)
    int8 = d / "model.int8.onnx"
    report = quantize_int8(path, int8, [train[i][0] for i in range(0, len(train), 2)],
                           eval_data=[val[i] for i in range(len(val))])
    return path, int8, diff, report


def test_export_round_trip_two_sizes_and_metadata(trained, exported):
    model, info = trained
    path, _, diff, _ = exported
    assert 0 <= diff < 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "image" and inp.shape == ["batch", 1, "height", "width"]
    for shape in [(1, 1, 64, 96), (3, 1, 75, 41)]:  # sizes the export check did not use
        x = torch.randn(*shape)
        out = sess.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert out.shape == (shape[0], 8, *shape[2:])
        assert np.abs(out - ref).max() < 1e-4
    meta_info, cfg = read_onnx_metadata(path)
    assert meta_info == info
    assert meta_info.class_names[5] == "right lung" and meta_info.class_colors[5] == (30, 110, 230)
    assert cfg == model.config.to_dict()
    assert UNet.from_config(cfg).config == model.config
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["in_channels"] == "1" and props["num_classes"] == "8"


def test_metadata_carries_the_trained_flips(trained):
    """The flips a model was trained with travel in the ``.onnx`` metadata (a predictor's default TTA); a file
    written before they were recorded reads as not recorded."""
    from dataclasses import replace

    info = replace(trained[1], flip_axes=(-1, -2))
    props = onnx_metadata(info, None)
    assert json.loads(props["flip_axes"]) == [-1, -2]
    assert parse_metadata(props)[0] == info
    del props["flip_axes"]
    assert parse_metadata(props)[0].flip_axes is None


def test_export_refuses_a_file_that_does_not_match(trained, tmp_path):
    model, info = trained
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, info, tmp_path / "bad.onnx", atol=0.0, check_shapes=((1, 32, 32),), dynamo=False,
                    verbose=False)
    assert not (tmp_path / "bad.onnx").exists()


def test_legacy_exporter_gives_the_same_model(trained, tmp_path):
    model, info = trained
    assert export_onnx(model, info, tmp_path / "ts.onnx", dynamo=False, verbose=False) < 1e-4
    assert read_onnx_metadata(tmp_path / "ts.onnx")[0] == info


def test_int8_model_contains_qdq_around_every_conv(exported, ct):
    _, int8, _, report = exported
    calib = [ct[0][i][0] for i in range(4)]
    model = onnx.load(str(int8))
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 13  # 3 encoder + 2 decoder double convs (10), 2 up-convs, the head
    head = convs.pop()  # kept in float by default: quantized logits would make close classes tie
    assert inits[head.input[1]].data_type == onnx.TensorProto.FLOAT  # a float initializer, no DequantizeLinear
    for conv in convs:
        act, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert act.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
        q_weight = inits[weight.input[0]]
        assert q_weight.data_type == onnx.TensorProto.INT8  # weights stored as int8
        scale = inits[weight.input[1]]
        out_ch = q_weight.dims[1] if conv.op_type == "ConvTranspose" else q_weight.dims[0]
        assert list(scale.dims) == [out_ch]  # per-channel scales
        assert producer[act.input[0]].op_type == "QuantizeLinear"  # activations quantized too
    assert report.convs_qdq == 12 and report.convs_float == 1
    assert report.quantize_nodes > 0 and report.dequantize_nodes >= 2 * len(convs)
    assert quantized_node_counts(onnx.load(str(exported[0])))["convs_qdq"] == 0
    everything = quantize_int8(exported[0], int8.with_name("all.onnx"), calib, keep_head_fp32=False)
    assert everything.convs_qdq == 13 and everything.convs_float == 0 and everything.agreement is None


def test_int8_agrees_with_fp32_on_real_ct_slices(exported):
    _, _, _, report = exported
    # The model predicts structure (constant background would be mIoU 0.07, pixel accuracy 0.57) ...
    assert report.miou_fp32 > 0.25
    # ... and INT8 keeps it: >= 99% of pixels get the same class, mIoU within 1 point.
    assert report.agreement >= 0.99
    assert abs(report.miou_fp32 - report.miou_int8) < 0.01
    assert report.eval_images == 8
    assert report.latency_fp32_ms > 0 and report.latency_int8_ms > 0
    table = report.table()
    assert "| int8 |" in table and f"{report.agreement:.4f}" in table


def test_int8_and_fp32_run_through_predict(exported, trained, ct):
    path, int8, _, _ = exported
    model, info = trained
    _, val = ct
    x = torch.stack([val[i][0] for i in range(4)])
    fp32 = OnnxModel(path)
    assert fp32.data_info == info and OnnxModel(int8).data_info == info  # metadata survives quantization
    ref = predict(model, x)
    assert torch.equal(predict(fp32, x), ref)
    labels8 = predict(OnnxModel(int8), x, tile_size=64)
    assert float((labels8 == ref).float().mean()) > 0.98
    assert len(torch.unique(ref)) >= 4  # background, lungs, soft tissue at least


def test_pt2e_int8_agrees_with_fp32_on_real_ct_slices(trained, ct):
    pytest.importorskip("torchao", reason="PT2E quantization lives in torchao since torch 2.14")
    from unetkit.export import quantize_pt2e

    model, _ = trained
    train, val = ct
    q = quantize_pt2e(model, [train[i][0] for i in range(0, len(train), 2)])
    targets = [str(n.target) for n in q.graph.nodes if n.op == "call_function"]
    assert sum("quantize_per_tensor" in t for t in targets) >= 10  # activations quantized
    assert sum("dequantize_per_channel" in t for t in targets) >= 10  # per-channel int8 conv weights
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        agree = (q(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert float(agree) >= 0.99


def _quantized_modules(model: nn.Module) -> list[str]:
    """Class names of the modules that torch.ao quantization replaced (they live in ``torch.ao.nn.quantized``)."""
    return [type(m).__name__ for m in model.modules()
            if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))]


def test_dynamic_quantization_leaves_every_conv_in_float():
    """``quantize_dynamic`` has kernels for Linear and recurrent layers only: asking for ``nn.Conv2d`` too
    quantizes nothing in a UNet (0 quantized convs, bit-identical output). Hence static INT8 for UNets."""
    from torch.ao.quantization import quantize_dynamic

    def dynamic(m: nn.Module) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            return quantize_dynamic(copy.deepcopy(m).eval(), {nn.Conv2d, nn.Linear}, dtype=torch.qint8)

    model = UNet(num_classes=3, in_channels=1, base_channels=4, depth=3).eval()
    qmodel = dynamic(model)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 11  # the 2 up-convs are ConvTranspose2d
    assert sum("Conv" in name for name in _quantized_modules(qmodel)) == 0
    assert _quantized_modules(qmodel) == []  # nothing at all, in fact
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(qmodel(x), model(x))  # bit-identical: nothing was quantized
    # The count is not blind: the same call does quantize a Linear layer.
    assert "Linear" in _quantized_modules(dynamic(nn.Sequential(nn.Linear(4, 4))))


# ----------------------------------------------------------------------------------------- runtime
def test_ort_session_builds_from_a_file_or_bytes_with_the_requested_options(exported):
    path = exported[0]
    from_file = ort_session(path, threads=1)
    from_bytes = ort_session(path.read_bytes(), optimize=False)
    x = np.random.default_rng(0).standard_normal((1, 1, 40, 56), dtype=np.float32)
    a = from_file.run(None, {"image": x})[0]
    b = from_bytes.run(None, {"image": x})[0]
    assert a.shape == (1, 8, 40, 56) and np.abs(a - b).max() < 1e-4  # optimised or not, the same model
    assert from_file.get_providers() == ["CPUExecutionProvider"]
    assert from_file.get_session_options().intra_op_num_threads == 1
    opts = from_bytes.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    basic = ort_session(path, optimize="basic").get_session_options()
    assert basic.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ValueError, match="optimize must be"):
        ort_session(path, optimize="fast")


def test_onnx_model_attributes_and_errors(exported, trained, tmp_path):
    path = exported[0]
    model, info = trained
    m = OnnxModel(path, threads=1)
    assert m.num_classes == 8 and m.data_info == info and m.config == model.config.to_dict()
    assert m.device == torch.device("cpu") and m.training is False and m.eval() is m
    assert m.session.get_session_options().intra_op_num_threads == 1
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        assert (m(x) - model(x)).abs().max() < 1e-4
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    bare = onnx.load(str(path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="no unetkit metadata"):
        OnnxModel(tmp_path / "bare.onnx")


def test_compare_onnx_times_with_the_shared_timer(exported, ct, monkeypatch):
    import unetkit.export.quantize as quantize

    path, int8, _, report = exported
    calls = []

    def fake_median_time(fn, repeats=5, warmup=1, device=None):
        calls.append((repeats, warmup))
        fn()
        return 0.004

    monkeypatch.setattr(quantize, "median_time", fake_median_time)
    _, val = ct
    again = compare_onnx(path, int8, [val[i] for i in range(len(val))], repeats=3)
    assert calls == [(3, 2)] * 4  # fp32 and INT8, interleaved twice
    assert again.latency_fp32_ms == pytest.approx(4.0) and again.latency_int8_ms == pytest.approx(4.0)
    assert again.eval_images == 8
    assert again.agreement == pytest.approx(report.agreement, abs=1e-4)  # the same models, the same labels
    assert again.miou_int8 == pytest.approx(report.miou_int8, abs=1e-4)


def test_importing_infer_does_not_load_onnxruntime():
    code = "import sys, unetkit.inference; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def ckpt_and_images(trained, ct, tmp_path_factory):
    from unetkit.data.export import save_image

    model, info = trained
    _, val = ct
    d = tmp_path_factory.mktemp("cli")
    ckpt = d / "run" / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(), "data": info.to_dict(),
                     "config": {"data": "ct-chest"}}, ckpt)
    images = d / "images"
    images.mkdir()
    for i in range(3):
        save_image(val.load_raw(i)[0].numpy(), images / f"slice{i}", bit_depth=16)
    return ckpt, images


def test_export_cli_writes_fp32_and_int8_with_report(ckpt_and_images, tmp_path, capsys):
    ckpt, images = ckpt_and_images
    out = tmp_path / "m.onnx"
    rc = main(["export", str(ckpt.parent), "--out", str(out), "--int8", "--calibration", str(images),
               "--calib-samples", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert out.is_file() and (tmp_path / "m.int8.onnx").is_file()
    assert "| fp32 |" in text and "| int8 |" in text and "validation split of ct-chest (8 images, ONNX Runtime" in text
    assert "12 convs in INT8, 1 in float" in text
    assert read_onnx_metadata(tmp_path / "m.int8.onnx")[0].class_names[0] == "background"


def test_export_cli_errors(ckpt_and_images, tmp_path, capsys):
    ckpt, _ = ckpt_and_images
    assert main(["export", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in torch.load(ckpt, weights_only=True).items() if k != "config"}, bare)
    assert main(["export", str(bare), "--int8", "--out", str(tmp_path / "b.onnx")]) == 2
    assert "--calibration" in capsys.readouterr().err


def test_predict_cli_same_labels_from_checkpoint_and_onnx(ckpt_and_images, exported, trained, ct, tmp_path):
    ckpt, images = ckpt_and_images
    path, int8, _, _ = exported
    masks = {}
    for name, model in [("pt", ckpt), ("onnx", path), ("int8", int8)]:
        out = tmp_path / name
        assert main(["predict", str(model), str(images), "--out", str(out), "--no-progress"]) == 0
        masks[name] = [np.array(Image.open(out / f"slice{i}_mask.png")) for i in range(3)]
    for a, b, c in zip(masks["pt"], masks["onnx"], masks["int8"]):
        assert a.shape == (128, 128)
        assert np.array_equal(a, b)
        assert (a == c).mean() > 0.98
    # Reading a 16-bit PNG of a slice and normalising with the checkpoint's mean/std reproduces the dataset's
    # input, so the masks are the model's predictions on the validation slices.
    model = Predictor.load(ckpt, device="cpu", fast=False).model
    _, val = ct
    for i, a in enumerate(masks["pt"]):
        assert (predict(model, val[i][0]).numpy() == a).mean() > 0.999
