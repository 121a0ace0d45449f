"""The benchmark suite: it runs at tiny sizes, its JSON has the fields, and its FLOPs and derived figures are
what they claim. No timing is asserted (only that times are positive and finite)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from unetkit import UNet
from unetkit.bench import (
    GOALS,
    PeakMemory,
    PeakProbe,
    bench_encoders,
    bench_metrics,
    count_forward_flops,
    count_train_flops,
    format_encoders_markdown,
    format_metrics,
    format_report,
    keep_freed_memory,
    matmul_peak,
    run_bench,
)
from unetkit.cli.main import main
from unetkit.inference import preferred_channels_last, prepare_inference
from unetkit.models import UNetConfig

TINY = {"config": UNetConfig(encoder="plain", base_channels=4), "size": 32, "batch": 2, "infer_batch": 3,
        "iters": 2, "warmup": 1, "peak_n": 512}


def finite_positive(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


def independent_forward_flops(model, x) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(x)
    return c.get_total_flops()


def independent_train_flops(model, x, y) -> int:
    model.train()
    with FlopCounterMode(display=False) as c:
        F.cross_entropy(model(x), y).backward()
    return c.get_total_flops()


@pytest.fixture(scope="module", autouse=True)
def quick_bench(one_torch_thread):
    """One torch thread (tiny tensors), and the reference convolution at a tiny size: the peak is measured
    the same way, in a fraction of the time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PeakProbe, "CONV", (1, 16, 16))
        yield


@pytest.fixture(scope="module")
def report():
    return run_bench(**TINY, channels_last="both")


def test_report_rows_and_derived_figures(report):
    assert report["schema"] == 1
    assert report["config"]["size"] == 32 and report["config"]["batch"] == 2
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["torch_threads"] == torch.get_num_threads()
    peak = report["peak"]
    assert finite_positive(peak["gflops"]) and peak["n"] == 512 and peak["dtype"] == "float32"
    assert finite_positive(peak["conv_gflops"]) and peak["max_gflops"] == max(peak["samples"])
    # One peak sample per timed round of each of the three phases.
    assert len(peak["samples"]) == len(peak["conv_samples"]) == 3 * TINY["iters"]
    rows = report["rows"]
    # train, infer1, inferN x (nchw, channels_last), our model only
    assert sorted((r["phase"], r["layout"]) for r in rows) == sorted(
        (p, lay) for p in ("train", "infer1", "inferN") for lay in ("nchw", "channels_last"))
    m = report["models"]["unetkit"]
    for r in rows:
        assert r["iters"] == TINY["iters"] and len(r["times_s"]) == TINY["iters"]
        assert all(finite_positive(t) for t in r["times_s"])
        assert r["median_s"] == pytest.approx(sorted(r["times_s"])[0] / 2 + sorted(r["times_s"])[1] / 2)
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["latency_ms"] == pytest.approx(1000 * r["median_s"])
        expected = m["train_flops"] if r["phase"] == "train" else m["forward_flops"] * r["batch"]
        assert r["flops_per_step"] == expected
        assert r["gflops"] == pytest.approx(expected / r["median_s"] / 1e9)
        assert r["frac_peak"] == pytest.approx(r["gflops"] / peak["gflops"])
        assert r["frac_conv_peak"] == pytest.approx(r["gflops"] / peak["conv_gflops"])
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0
        assert r["compile_s"] is None and not r["compiled"]
        assert r["fused"] == (r["phase"] != "train")
    assert {r["batch"] for r in rows if r["phase"] == "inferN"} == {3}
    assert set(report["best"]["unetkit"]) == {"train", "infer1", "inferN"}
    assert report["ratios"] == {}
    assert set(report["goals"]) == set(GOALS)
    assert report["goals"]["train_per_flop_vs_smp"]["met"] is None
    assert report["goals"]["train_frac_peak"]["value"] == report["best"]["unetkit"]["train"]["frac_peak"]


def test_flops_equal_an_independent_count(report):
    m = report["models"]["unetkit"]
    model = UNet(encoder="plain", base_channels=4)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    assert report["config"]["model"] == model.config.to_dict()  # built as UNet(config), depth resolved
    assert report["config"]["model_options"] == {"base_channels": 4}
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 2, (2, 32, 32))
    assert m["forward_flops"] == independent_forward_flops(model, x[:1]) > 0
    assert m["train_flops"] == independent_train_flops(model, x, y) > 2 * m["forward_flops"]
    # The library helpers agree and leave the model as they found it.
    model.train()
    assert count_forward_flops(model, x[:1]) == m["forward_flops"] and model.training
    assert count_train_flops(model, x, y) == m["train_flops"]
    assert all(p.grad is None for p in model.parameters())


def test_format_report_lists_every_row(report):
    text = format_report(report)
    assert "fp32 matmul peak" in text and "GFLOP/s" in text
    assert text.count("unetkit  ") >= len(report["rows"])
    md = format_report(report, markdown=True)
    assert "| model | phase |" in md


def test_compare_smp_ratios_and_compile(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    out = tmp_path / "bench.json"
    code = main(["bench", "--encoder", "plain", "--base-channels", "4", "--size", "32", "--batch", "2",
                 "--iters", "1", "--warmup", "0", "--phases", "train,infer1", "--channels-last", "off",
                 "--compare", "smp", "--smp-encoder", "resnet18", "--quiet", "--json", str(out)])
    assert code == 0
    rep = json.loads(out.read_text())
    assert set(rep["models"]) == {"unetkit", "smp"}
    assert rep["config"]["model_options"] == {"base_channels": 4}  # the generated model flags
    assert rep["models"]["unetkit"]["params"] == sum(p.numel() for p in UNet(base_channels=4).parameters())
    assert rep["models"]["smp"]["name"] == "smp Unet('resnet18')"
    import segmentation_models_pytorch as smp

    ref = smp.Unet("resnet18", encoder_weights=None, classes=2)
    assert rep["models"]["smp"]["params"] == sum(p.numel() for p in ref.parameters())
    assert rep["models"]["smp"]["forward_flops"] == independent_forward_flops(ref, torch.zeros(1, 3, 32, 32))
    best = rep["best"]
    ours, theirs = best["unetkit"]["train"], best["smp"]["train"]
    assert rep["ratios"]["train_per_flop"] == pytest.approx(ours["gflops"] / theirs["gflops"])
    flop_ratio = rep["models"]["unetkit"]["train_flops"] / rep["models"]["smp"]["train_flops"]
    assert rep["ratios"]["train_per_flop_min"] == pytest.approx(theirs["min_s"] / ours["min_s"] * flop_ratio)
    assert rep["ratios"]["train_per_flop_paired"] == pytest.approx(theirs["times_s"][0] / ours["times_s"][0]
                                                                    * flop_ratio)  # one round
    assert rep["config"]["keep_freed_memory"] == keep_freed_memory()  # the CLI's default (True on glibc)
    assert rep["ratios"]["infer1_images_per_s"] == pytest.approx(best["unetkit"]["infer1"]["images_per_s"]
                                                                  / best["smp"]["infer1"]["images_per_s"])
    assert rep["goals"]["train_per_flop_vs_smp"]["value"] == pytest.approx(rep["ratios"]["train_per_flop"])
    assert isinstance(rep["goals"]["train_per_flop_vs_smp"]["met"], bool)


def test_decoders_are_timed_with_the_others_and_compared_with_smp(capsys):
    pytest.importorskip("segmentation_models_pytorch")
    rep = run_bench(**{**TINY, "iters": 1, "warmup": 0}, phases=("train",), channels_last="off",
                    compare="smp", smp_encoder="resnet18", decoders=("mirror", (8, 8, 4, 4)))
    assert list(rep["models"]) == ["unetkit", "unetkit[mirror]", "unetkit[8,8,4,4]", "smp"]
    assert rep["config"]["decoders"] == ["unetkit[mirror]", "unetkit[8,8,4,4]"]
    assert rep["models"]["unetkit[8,8,4,4]"]["params"] == sum(
        p.numel() for p in UNet(base_channels=4, decoder_channels=(8, 8, 4, 4)).parameters())
    best = rep["best"]
    for key in ("unetkit[mirror]", "unetkit[8,8,4,4]"):
        assert rep["ratios"][f"{key}/train_images_per_s"] == pytest.approx(
            best[key]["train"]["images_per_s"] / best["smp"]["train"]["images_per_s"])
        assert rep["ratios"][f"{key}/train_images_per_s_paired"] == pytest.approx(
            best["smp"]["train"]["times_s"][0] / best[key]["train"]["times_s"][0])
    assert rep["goals"]["train_images_per_s_vs_smp"]["value"] == rep["ratios"]["train_images_per_s"]
    assert "ratio unetkit[8,8,4,4]/smp train_per_flop:" in format_report(rep)
    assert main(["bench", "--decoders", "wide", "--quiet"]) == 2
    assert "--decoders" in capsys.readouterr().err


def test_compiled_variant_reports_compile_time():
    # A graph inductor compiles quickly: two stages, no norm layers, channels_last (no layout copies).
    config = UNetConfig(encoder="plain", base_channels=2, depth=2, norm="none")
    rep = run_bench(config, size=16, batch=1, iters=1, warmup=0, phases=("infer1",), channels_last="on",
                    compile="both", fuse="off", peak_n=64)
    rows = {r["compiled"]: r for r in rep["rows"]}
    assert set(rows) == {False, True}
    assert rows[True]["compile_s"] >= 0 and rows[False]["compile_s"] is None
    assert rows[True]["first_call_s"] >= rows[True]["compile_s"]


def test_fuse_both_and_auto_layout():
    rep = run_bench(**{**TINY, "iters": 1}, phases=("infer1",), channels_last="auto", fuse="both")
    assert sorted(r["fused"] for r in rep["rows"]) == [False, True]
    expected = "channels_last" if preferred_channels_last("cpu", "infer") else "nchw"
    assert {r["layout"] for r in rep["rows"]} == {expected}


@pytest.mark.parametrize("bad", [{"channels_last": "sideways"}, {"compile": "maybe"},
                                 {"phases": ("train", "x")}, {"compare": "keras"}, {"iters": 0}])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        run_bench(**{**TINY, **bad})


def test_cli_user_errors_exit_2(capsys):
    assert main(["bench", "--encoder", "nope", "--quiet"]) == 2
    assert "unknown encoder" in capsys.readouterr().err
    assert main(["bench", "--phases", "train,sideways", "--quiet"]) == 2
    assert main(["bench", "--iters", "0", "--quiet"]) == 2
    assert main(["bench", "--device", "tpu", "--quiet"]) == 2


def test_matmul_peak_and_peak_memory():
    peak = matmul_peak(n=256, repeats=3)
    assert len(peak["samples"]) == 3 and all(finite_positive(s) for s in peak["samples"])
    with PeakMemory(torch.device("cpu")) as pm:
        t = torch.ones(16 * 2**20)  # 64 MiB, touched
        del t
    if pm.peak is not None:  # Linux: /proc/self/status
        assert pm.peak >= 60 * 2**20


def test_metrics_bench_fields():
    rep = bench_metrics(size=64, num_classes=8, batch=2, iters=2, warmup=1)
    assert rep["pixels_per_update"] == 2 * 64 * 64
    assert {"unetkit_logits", "unetkit_labels"} <= set(rep["results"])
    for r in rep["results"].values():
        assert len(r["times_s"]) == 2 and finite_positive(r["median_s"])
        assert r["pixels_per_s"] == pytest.approx(rep["pixels_per_update"] / r["median_s"])
    assert "Mpixel/s" in format_metrics(rep)


def test_encoders_bench_table():
    rep = bench_encoders(["plain", "resnet18"], size=32, iters=1, warmup=1)
    rows = {r["encoder"]: r for r in rep["rows"]}
    assert set(rows) == {"plain", "resnet18"}
    model = UNet(encoder="resnet18")
    assert rows["resnet18"]["params"] == sum(p.numel() for p in model.parameters())
    assert rows["resnet18"]["forward_flops"] == independent_forward_flops(model, torch.zeros(1, 3, 32, 32))
    for r in rows.values():
        assert finite_positive(r["ms_nchw"]) and finite_positive(r["ms_channels_last"])
        assert r["ms"] == min(r["ms_nchw"], r["ms_channels_last"])
    md = format_encoders_markdown(rep)
    assert md.count("\n| ") == 3 and "| resnet18 |" in md


def test_cli_metrics_and_encoders_json(tmp_path):
    out = tmp_path / "m.json"
    assert main(["bench", "--suite", "metrics", "--size", "32", "--batch", "1", "--iters", "1",
                 "--num-classes", "3", "--quiet", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["pixels_per_update"] == 32 * 32 and rep["config"]["num_classes"] == 3
    out2 = tmp_path / "e.json"
    assert main(["bench", "--suite", "encoders", "--encoders", "plain", "--size", "32", "--iters", "1",
                 "--quiet", "--json", str(out2)]) == 0
    assert [r["encoder"] for r in json.loads(out2.read_text())["rows"]] == ["plain"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_prepare_inference_keeps_outputs(channels_last):
    model = UNet(num_classes=3, base_channels=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ref = model(x)
    fast, example = prepare_inference(copy.deepcopy(model), x, channels_last=channels_last)
    assert example.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.inference_mode():
        out = fast(example)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------------------- precision
def test_amp_variants_run_under_their_autocast():
    from unetkit.bench.harness import Variant, train_step

    rep = run_bench(**{**TINY, "iters": 1}, phases=("train", "infer1"), channels_last="off", amp=("off", "bf16"))
    assert sorted((r["phase"], r["amp"]) for r in rep["rows"]) == [
        ("infer1", "bf16"), ("infer1", "fp32"), ("train", "bf16"), ("train", "fp32")]
    assert rep["config"]["amp"] == ["fp32", "bf16"]
    flops = {(r["phase"], r["amp"]): r["flops_per_step"] for r in rep["rows"]}
    assert flops[("train", "bf16")] == flops[("train", "fp32")]  # same work, other precision
    assert "bf16" in format_report(rep)
    # The step itself: forward in bf16, loss, parameters and gradients in fp32.
    model = UNet(encoder="plain", base_channels=4)
    v = Variant("unetkit", "nchw", False, False, model, model, torch.randn(2, 3, 32, 32),
                torch.randint(0, 2, (2, 32, 32)), torch.optim.SGD(model.parameters(), lr=1e-3), amp=torch.bfloat16)
    with v.autocast():
        assert model(v.x).dtype == torch.bfloat16
    before = [p.detach().clone() for p in model.parameters()]
    train_step(v)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert v.label == "unetkit/nchw+bf16"


def test_cli_amp_errors_exit_2(capsys):
    assert main(["bench", "--amp", "fp16", "--quiet"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main(["bench", "--amp", "off,fp8", "--quiet"]) == 2
    assert "--amp takes" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- predict paths
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict-bench")
    cfg = d / "c.yaml"
    cfg.write_text("data: shapes\nbase_channels: 4\ndepth: 3\nbatch_size: 2\nepochs: 2\nsamples: 0\n"
                   "boundary_f1: false\ndata_options: {size: 48, num_samples: 6, val_samples: 3}\n")
    assert main(["train", "--config", str(cfg), "--out", str(d / "run"), "--quiet", "--device", "cpu"]) == 0
    return d / "run"


def test_predict_paths_side_by_side(tiny_run, tmp_path):
    from unetkit.bench.predict_suite import available_paths, bench_predict, format_predict

    pytest.importorskip("onnxruntime")
    # conftest pins fp32 on the CPU, so --amp auto is fp32 here and bf16 is not offered.
    assert available_paths(torch.device("cpu")) == ["eager", "fp32", "compile", "onnx", "int8"]
    with pytest.raises(ValueError, match="bf16"):
        bench_predict(tiny_run, paths=["bf16"], rounds=1)
    with pytest.raises(ValueError, match="unknown path"):
        bench_predict(tiny_run, paths=["tensorrt"], rounds=1)
    rep = bench_predict(tiny_run, paths=["fp32", "onnx", "int8"], rounds=2, max_images=4)
    rows = {r["path"]: r for r in rep["rows"]}
    assert list(rows) == ["eager", "fp32", "onnx", "int8"]  # eager, the reference, always comes first
    assert rep["images"] == 4 and rep["image_size"] == [48, 48] and rep["default_path"] == "fp32"
    assert rows["eager"]["speedup"] == 1.0 and rows["eager"]["identical_pixels"] == 1.0
    for r in rows.values():
        assert len(r["times_s"]) == 2 and r["images_per_s"] == pytest.approx(4 / r["seconds"])
        assert r["speedup"] == pytest.approx(rows["eager"]["seconds"] / r["seconds"])
        assert r["default"] == (r["path"] == "fp32")
    assert rows["fp32"]["identical_pixels"] > 0.99 and rows["onnx"]["identical_pixels"] > 0.99
    assert 0.5 < rows["int8"]["identical_pixels"] <= 1.0
    assert "fp32 (default)" in format_predict(rep)
    out = tmp_path / "p.json"
    assert main(["bench", "--suite", "predict", "--run", str(tiny_run), "--paths", "fp32", "--iters", "1",
                 "--quiet", "--json", str(out)]) == 0
    assert [r["path"] for r in json.loads(out.read_text())["rows"]] == ["eager", "fp32"]


def test_cli_predict_suite_needs_a_run(capsys):
    assert main(["bench", "--suite", "predict", "--quiet"]) == 2
    assert "--run" in capsys.readouterr().err
