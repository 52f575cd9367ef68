"""LiteEval on generated data: unit behaviour on hand-built batches (random-init models), then
the paper's claims checked by short trainings on the synthetic feature store
(trainers/synthetic.py: coarse features tell informative frames and the class pair, fine
features tell the class; 400 videos of 12-24 frames, tiny feature dims, costs of the named
backbones) and, for the synchronisation ablation, on a generated "context" store built here
(make_context_store). Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import types

import numpy as np
import pytest
import torch

from featstore import StoreWriter, ViewSpec, build_catalog, open_store
from trainers import liteeval, online
from trainers.baselines import Config as BaselineConfig
from trainers.config import RunConfig
from trainers.data import StoreInfo, ViewInfo, make_loader, store_info
from trainers.method import Batch, TrainState
from trainers.online import emit_step, uniform_positions
from trainers.synthetic import make_synthetic_store
from trainers.train import load_run, train

EPOCHS = 6


def tiny_info(dc: int = 6, df: int = 8, classes: int = 3) -> StoreInfo:
    views = {
        "coarse": ViewInfo("coarse", dc, "mobilenet_v2", 112, 0.1, {}, {}),
        "fine": ViewInfo("fine", df, "resnet101", 224, 8.0, {}, {}),
    }
    return StoreInfo(views=views, classes=[f"c{i}" for i in range(classes)], num_classes=classes)


def tiny_batch(lengths: list[int], dc: int = 6, df: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    lens = torch.tensor(lengths)
    mask = torch.arange(t)[None, :] < lens[:, None]
    feats = {
        "coarse": torch.randn(len(lengths), t, dc, generator=g) * mask[..., None],
        "fine": torch.randn(len(lengths), t, df, generator=g) * mask[..., None],
    }
    targets = torch.zeros(len(lengths), classes)
    targets[torch.arange(len(lengths)), torch.arange(len(lengths)) % classes] = 1
    return Batch(feats, lens, mask, targets, [f"v{i}" for i in range(len(lengths))])


def force_gate(model: liteeval.LiteEval, fine: bool) -> None:
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.copy_(torch.tensor([-10.0, 10.0] if fine else [10.0, -10.0]))


def test_cost_counts_fine_only_where_the_gate_fired():
    info = tiny_info()
    model = liteeval.build(liteeval.Config(coarse_hidden=4, fine_hidden=8), info).eval()
    batch = tiny_batch([5, 3])
    for fine in (False, True):
        force_gate(model, fine)
        out = model(batch, TrainState(training=False))
        n_fine = batch.lengths if fine else torch.zeros(2, dtype=torch.int64)
        assert torch.equal(out.frames_used["fine"], n_fine)
        assert torch.equal(out.frames_used["coarse"], batch.lengths)
        expected = (batch.lengths * (0.1 + model.coarse_step_gmacs)
                    + n_fine * (8.0 + model.fine_step_gmacs) + model.classifier_gmacs)
        assert torch.allclose(out.gflops.double(), expected.double())
        assert out.decisions[1, 3:].tolist() == [-1, -1]
    assert model.coarse_step_gmacs > 0 and model.fine_step_gmacs > model.coarse_step_gmacs


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sync_carries_coarse_information_when_no_fine_frame_is_read(cell):
    """eq. 5: with the gate always skipping, only the synchronised model sees the video."""
    info = tiny_info()
    batch = tiny_batch([5, 5])
    other = dataclasses.replace(batch, features={**batch.features,
                                                 "coarse": batch.features["coarse"] + 1.0})
    for no_sync in (False, True):
        torch.manual_seed(0)
        model = liteeval.build(liteeval.Config(coarse_hidden=4, fine_hidden=8, no_sync=no_sync,
                                               cell=cell), info).eval()
        force_gate(model, fine=False)
        a = model(batch, TrainState(training=False)).logits
        b = model(other, TrainState(training=False)).logits
        assert torch.allclose(a, b) == no_sync


def test_fine_readout_averages_the_states_of_the_frames_read():
    """readout="fine": mean of h^f_t over the frames whose fine feature was read (B_t = 1),
    the plain mean of all steps until the first read; "mean" averages every valid step."""
    states = [torch.full((1, 2), float(t)) for t in range(4)]
    mask, read = torch.ones(1, 4), torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    stub = types.SimpleNamespace(cfg=liteeval.Config(readout="fine"))
    fine = liteeval.LiteEval._running_readout(stub, states, mask, read)
    assert fine[0, :, 0].tolist() == [0.0, 1.0, 1.0, 2.0]
    stub.cfg = liteeval.Config(readout="mean")
    mean = liteeval.LiteEval._running_readout(stub, states, mask, read)
    assert mean[0, :, 0].tolist() == [0.0, 0.5, 1.0, 1.5]


def test_padding_does_not_change_a_video_prediction():
    info = tiny_info()
    torch.manual_seed(0)
    model = liteeval.build(liteeval.Config(coarse_hidden=4, fine_hidden=8), info).eval()
    batch = tiny_batch([6, 3])
    alone = Batch({v: x[1:2, :3] for v, x in batch.features.items()}, batch.lengths[1:],
                  batch.mask[1:, :3], batch.targets[1:], ["v1"])
    state = TrainState(training=False)
    assert torch.allclose(model(batch, state).logits[1], model(alone, state).logits[0], atol=1e-6)


@pytest.mark.parametrize("gate, cell", [("gumbel", "lstm"), ("reinforce", "lstm"),
                                        ("gumbel", "gru")])
def test_training_step_gives_hard_decisions_and_trains_the_gate(gate, cell):
    info = tiny_info()
    torch.manual_seed(0)
    model = liteeval.build(liteeval.Config(coarse_hidden=4, fine_hidden=8, gate=gate, cell=cell),
                           info)
    batch = tiny_batch([6, 4, 5])
    state = TrainState(epoch=0, training=True)
    out = model(batch, state)
    assert set(out.decisions[batch.mask].tolist()) <= {0, 1}
    loss, parts = model.loss(out, batch, state)
    loss.backward()
    assert model.gate.weight.grad is not None and model.gate.weight.grad.abs().sum() > 0
    assert {"cls", "usage", "tau"} <= set(parts)


def test_temperature_anneals_from_high_to_low():
    cfg = liteeval.Config(tau_start=5.0, tau_end=0.5, tau_decay=0.5)
    taus = [liteeval.temperature(cfg, e) for e in range(8)]
    assert taus[0] == 5.0 and taus[-1] == 0.5
    assert all(a >= b for a, b in itertools.pairwise(taus))


@pytest.mark.parametrize(
    "change, name",
    [({"gamma": 1.5}, "gamma"), ({"fine_view": "nope"}, "fine_view"),
     ({"coarse_hidden": 16, "fine_hidden": 8}, "coarse_hidden"), ({"cell": "sru"}, "cell"),
     ({"gate": "argmax"}, "gate")],
)
def test_bad_config_is_refused_naming_the_value(change, name):
    with pytest.raises(ValueError, match=name):
        liteeval.build(liteeval.Config(**change), tiny_info())


def test_online_emit_step_and_uniform_positions():
    decisions = torch.tensor([0, 1, 0, 1, 1, 0]).numpy()
    assert emit_step(decisions, 6, 1) == (1, 1)
    assert emit_step(decisions, 6, 3) == (4, 3)
    assert emit_step(decisions, 6, 5) == (5, 3)  # never reaches K: emits at the end
    assert uniform_positions(10, 2).tolist() == [2, 7]
    assert uniform_positions(3, 8).tolist() == [0, 1, 2]


# -- claims, on short trainings ------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("liteeval") / "store"
    return make_synthetic_store(path, videos=400, classes=8, frames=(12, 24), seed=1)


def make_context_store(path, videos: int = 400, seed: int = 0):
    """A store where eq. 5 must matter: 8 classes = 4 scene contexts x 2 details. Coarse
    features show the context on background frames only and mark the 3 informative frames;
    fine features show the detail on those 3 frames only and never the context. A model that
    reads fine features only where they pay must carry the context from coarse-only frames."""
    rng = np.random.default_rng(seed)
    dc, df = 16, 32

    def unit(n: int, d: int) -> np.ndarray:
        v = rng.standard_normal((n, d))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    context, mark_c = unit(4, dc), unit(1, dc)[0]
    detail, mark_f, background = unit(2, df), unit(1, df)[0], unit(4, df)
    writer = StoreWriter(path, part="context-000", views={
        "coarse": ViewSpec(dim=dc, backbone="mobilenet_v2", input_size=112, attrs={}),
        "fine": ViewSpec(dim=df, backbone="resnet101", input_size=224, attrs={})})
    for i in range(videos):
        label = i % 8
        t = int(rng.integers(12, 21))
        start = int(rng.integers(0, t - 2))
        inf = np.zeros((t, 1), dtype=bool)
        inf[start : start + 3] = True
        xc = np.where(inf, 2.5 * mark_c, 1.5 * context[label // 2])
        xf = np.where(inf, 3.0 * detail[label % 2] + mark_f,
                      1.5 * background[rng.integers(0, 4, t)])
        writer.add_video(
            f"ctx{i:04d}", labels=[f"class{label}"],
            split=("train", "train", "train", "val", "test")[(i // 8) % 5],
            timestamps=np.arange(t, dtype=np.float64),
            features={"coarse": (xc + rng.standard_normal((t, dc))).astype(np.float16),
                      "fine": (xf + rng.standard_normal((t, df))).astype(np.float16)})
    writer.close()
    build_catalog(path)
    return path


@pytest.fixture(scope="module")
def context_store(tmp_path_factory):
    return make_context_store(tmp_path_factory.mktemp("liteeval") / "context")


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """Train each configuration once for the whole module; returns name -> eval summary."""
    root = tmp_path_factory.mktemp("liteeval_runs")
    cache: dict[str, dict] = {}

    def get(name: str, method: str = "liteeval", on=None, epochs: int = EPOCHS,
            **changes) -> dict:
        if name not in cache:
            if method == "liteeval":
                mc = liteeval.Config(**({"coarse_hidden": 32, "fine_hidden": 64, "gamma": 0.3}
                                        | changes))
            else:
                mc = BaselineConfig(**changes)
            cfg = RunConfig(method=method, store=str(on or store), out=str(root / name),
                            epochs=epochs, batch_size=32, lr=5e-3, seed=0, method_config=mc)
            run = train(cfg)
            cache[name] = json.loads((run / "eval.json").read_text()) | {"run": str(run)}
        return cache[name]

    return get


def test_liteeval_matches_uniform_fine_at_a_fraction_of_its_cost(runs):
    le, uni = runs("gamma0.3"), runs("uniform", method="uniform", kind="uniform", view="fine")
    print(f"\nLiteEval mAP {le['mAP']:.4f} at {le['gflops_mean']:.1f} GFLOPs/video "
          f"(fine usage {le['fine_usage_mean']:.2f}); Uniform-fine mAP {uni['mAP']:.4f} at "
          f"{uni['gflops_mean']:.1f} ({le['gflops_mean'] / uni['gflops_mean']:.0%})")
    assert le["mAP"] >= uni["mAP"] - 0.02
    assert le["gflops_mean"] <= 0.6 * uni["gflops_mean"]


def test_raising_gamma_raises_fine_usage(runs):
    usage = {g: runs(f"gamma{g}", gamma=g)["fine_usage_mean"] for g in (0.05, 0.3, 0.8)}
    print(f"\nfine usage by gamma: {usage}")
    assert usage[0.05] < usage[0.3] < usage[0.8]


def test_sync_beats_no_sync_when_coarse_context_matters(runs, context_store):
    """Table 8 on the context store (see make_context_store), gamma=0.05, 10 epochs each."""
    sync = runs("ctx-sync", on=context_store, epochs=10, gamma=0.05)
    no_sync = runs("ctx-nosync", on=context_store, epochs=10, gamma=0.05, no_sync=True)
    print(f"\ncontext store, gamma=0.05 mAP: sync {sync['mAP']:.4f} at "
          f"{sync['gflops_mean']:.1f} GFLOPs (usage {sync['fine_usage_mean']:.2f}), no_sync "
          f"{no_sync['mAP']:.4f} at {no_sync['gflops_mean']:.1f} "
          f"(usage {no_sync['fine_usage_mean']:.2f})")
    assert sync["mAP"] > no_sync["mAP"]


def test_online_curve_accuracy_rises_with_k(runs):
    _, model, store_, _ = load_run(runs("gamma0.3")["run"])
    loader = make_loader(store_, model.required_views, "test", 64, False)
    ks = [1, 2, 4, 8]
    rows = online.online_curve(model, loader, ks)
    print("\nmethod     K   mAP    top1   GFLOPs")
    for r in rows:
        print(f"{r['method']:<9} {r['K']:>2} {r['mAP']:.3f}  {r['top1']:.3f}  {r['gflops']:.1f}")
    mine = [r for r in rows if r["method"] == "liteeval"]
    assert [r["K"] for r in mine] == ks
    assert mine[-1]["mAP"] > mine[0]["mAP"] + 0.2
    assert all(a["gflops"] < b["gflops"] for a, b in itertools.pairwise(mine))
    assert {r["method"] for r in rows} == {"liteeval", "uniform-k", "seq-k"}


def test_store_info_costs_are_measured_from_the_backbones(store):
    info = store_info(open_store(store))
    model = liteeval.build(liteeval.Config(coarse_hidden=8, fine_hidden=16), info)
    assert model.fine_gmacs == info.views["fine"].gmacs_per_frame > 10 * model.coarse_gmacs
