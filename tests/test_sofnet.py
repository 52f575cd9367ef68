"""SoF-Net (trainers/sofnet.py): stop-or-forward modules over cached stage features.

Data is generated: hand-built batches of random stage features for the mechanics (costs,
early termination, stages) and the synthetic feature store of trainers/synthetic.py for the
early-termination claim. Costs are the measured ones (backbones.flops.view_cost for the stages,
trainers.cost.module_gmacs for the policy modules and the MLP).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backbones.flops import view_cost
from featstore import open_store
from trainers import sofnet
from trainers.config import resolve_config
from trainers.cost import module_gmacs
from trainers.data import StoreInfo, ViewInfo, make_loader
from trainers.method import Batch, TrainState
from trainers.synthetic import FINE_STAGES, VIEWS, load_truth, make_synthetic_store
from trainers.train import evaluate, load_run, train

CLASSES = 4
STAGES = tuple(FINE_STAGES)
SMALL = {"hidden": 16, "embed": 16, "mlp_hidden": 16}


@pytest.fixture(scope="module")
def info() -> StoreInfo:
    """The synthetic store's fine view (resnet101@224) with measured cumulative stage costs."""
    spec = VIEWS["fine"]
    cost = view_cost(spec.backbone, spec.input_size)
    fine = ViewInfo(
        "fine", spec.dim, spec.backbone, spec.input_size, cost.gmacs,
        {s: cost.stage_gmacs[s] for s in STAGES}, {s: d for s, (d, _) in FINE_STAGES.items()},
    )
    return StoreInfo({"fine": fine}, [f"c{i}" for i in range(CLASSES)], CLASSES)


def make_batch(info: StoreInfo, lengths: list[int], seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    steps, b = max(lengths), len(lengths)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    fine = info.views["fine"]
    stages = {
        s: torch.randn(b, steps, d, generator=gen) * mask[..., None]
        for s, d in fine.stage_dims.items()
    }
    feats = {"fine": torch.randn(b, steps, fine.dim, generator=gen) * mask[..., None]}
    targets = torch.zeros(b, CLASSES)
    targets[torch.arange(b), torch.arange(b) % CLASSES] = 1.0
    return Batch(feats, torch.tensor(lengths), mask, targets, [f"v{i}" for i in range(b)],
                 {"fine": stages})


def force_gates(model: sofnet.SoFNet, stop_at: int | None) -> None:
    """Modules before `stop_at` always forward, module `stop_at` always stops (None: none)."""
    with torch.no_grad():
        for k, pm in enumerate(model.policies):
            pm.gate.weight.zero_()
            forward = stop_at is None or k < stop_at
            pm.gate.bias.copy_(torch.tensor([0.0, 50.0 if forward else -50.0]))


def module_cost(model: sofnet.SoFNet, info: StoreInfo, k: int) -> float:
    """W_x + LSTM step + W_g of module k, measured independently of the model's table."""
    pm, dims, h = model.policies[k], info.views["fine"].stage_dims, torch.zeros(1, 16)
    return (module_gmacs(pm.fc, torch.zeros(1, dims[STAGES[k]]))
            + module_gmacs(pm.lstm, torch.zeros(1, 16), (h, h))
            + module_gmacs(pm.gate, h))


@pytest.mark.parametrize("stop_at", [0, 2, 4, None])
def test_cost_counts_only_the_stages_and_modules_a_frame_ran(
    info: StoreInfo, stop_at: int | None
) -> None:
    model = sofnet.build(sofnet.Config(**SMALL, early_termination=False), info).eval()
    force_gates(model, stop_at)
    out = model(make_batch(info, [7, 3]), TrainState(training=False))
    stage_gmacs = info.views["fine"].stage_gmacs
    if stop_at is None:
        mlp = module_gmacs(model.mlp, torch.zeros(1, info.views["fine"].dim))
        per_frame = stage_gmacs["res5"] + sum(module_cost(model, info, k) for k in range(5)) + mlp
        code = 5
    else:
        per_frame = stage_gmacs[STAGES[stop_at]] + sum(
            module_cost(model, info, k) for k in range(stop_at + 1)
        )
        code = stop_at
    print(f"stop at {stop_at}: {out.gflops.tolist()} GMACs, expected {per_frame:.6f}/frame")
    assert out.gflops.tolist() == pytest.approx([7 * per_frame, 3 * per_frame], rel=1e-12)
    assert out.decisions.tolist() == [[code] * 7, [code] * 3 + [-1] * 4]
    assert out.extras["frames_full"].tolist() == ([7, 3] if stop_at is None else [0, 0])


def test_early_termination_ends_the_video_and_its_cost(info: StoreInfo) -> None:
    cfg = sofnet.Config(**SMALL, early_termination=True, rho=1e-6, t_min=2)
    model = sofnet.build(cfg, info).eval()
    force_gates(model, None)
    batch = make_batch(info, [6])
    out = model(batch, TrainState(training=False))
    full = out.gflops.item() / 3
    assert out.decisions.tolist() == [[5, 5, 5, 6, 6, 6]]  # T-bar = 3 > T_min = 2, then exit
    model.cfg.early_termination = False
    everything = model(batch, TrainState(training=False))
    print(f"early exit after 3 of 6 frames: {out.gflops.item():.4f} vs "
          f"{everything.gflops.item():.4f} GMACs")
    assert everything.gflops.item() == pytest.approx(6 * full, rel=1e-12)
    first3 = model.mlp(batch.features["fine"][0, :3]).mean(dim=0)
    assert torch.allclose(out.logits[0], first3, atol=1e-6)  # eq. 3.6 over seen frames only


def test_efficiency_loss_is_the_lookup_of_eq_3_10_3_11(info: StoreInfo) -> None:
    model = sofnet.build(sofnet.Config(**SMALL), info).eval()
    force_gates(model, 2)  # modules 0, 1 forward, module 2 stops: two forward signals
    batch = make_batch(info, [5])
    state = TrainState(training=False)
    _, parts = model.loss(model(batch, state), batch, state)
    sg = info.views["fine"].stage_gmacs
    expected = ((sg["res5"] - sg["res1"]) + (sg["res5"] - sg["res2"])) / 5
    print(f"L_eff {parts['eff']:.6f}, expected {expected:.6f}")
    assert parts["eff"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("stage", ["warmup", "joint"])
def test_schedule_stage_freezes_what_it_should(info: StoreInfo, stage: str) -> None:
    model = sofnet.build(sofnet.Config(**SMALL), info)
    model.configure_stage(stage)
    state = TrainState(stage=stage, epoch=1)
    batch = make_batch(info, [9, 6, 8])
    out = model(batch, state)
    loss, parts = model.loss(out, batch, state)
    loss.backward()
    print(stage, {k: round(v, 4) for k, v in parts.items()})
    policy = [p for pm in model.policies for p in pm.policy_parameters()]
    learned = [p.grad is not None and p.grad.abs().sum() > 0 for p in policy]
    if stage == "warmup":  # every frame forwarded, decision parts frozen
        assert out.decisions[batch.mask].eq(5).all()
        assert not any(learned)
    else:
        assert all(learned)
    assert all(p.grad is not None for p in model.mlp.parameters())
    assert all(pm.inner.weight.grad is not None for pm in model.policies)
    assert [s for s, _ in sofnet.SCHEDULE] == ["warmup", "joint"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"view": "coarse"}, "coarse"),
        ({"stages": ("res9",)}, "res9"),
        ({"alpha": -0.1}, "alpha"),
        ({"rho": 1.5}, "rho"),
    ],
)
def test_config_refuses_bad_values(info: StoreInfo, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sofnet.build(sofnet.Config(**change), info)


def test_early_termination_saves_gflops_at_bounded_map_drop(tmp_path) -> None:
    """SoF-Net's claims (Tables 4.4-4.5) on the synthetic store, at the thesis' rho = 0.999,
    T_min = 3: early termination lowers GFLOPs/video with at most a 3-point mAP drop, and the
    policy stops background frames more often than informative ones."""
    # 16 classes, 20% informative frames: hard enough that test mAP is not saturated at 1.0
    store = make_synthetic_store(tmp_path / "store", videos=192, classes=16, informative=0.2,
                                 seed=1)
    # SoF-Net's loop defaults (trainers/methods.py SOFNET_RUN: standardised features, step
    # schedule, clipping); only the sizes are small
    rc = resolve_config("sofnet", sets=["hidden=32", "embed=32", "mlp_hidden=128", "epochs=12"],
                        store=str(store), out=str(tmp_path / "run"))
    run = train(rc)
    # last.pt: the end of the joint stage (best.pt may be a warm-up epoch that forwards all)
    _, model, st, info = load_run(run, "last")
    loader = make_loader(st, model.required_views, "test", 32, False, 0, True)
    results = {}
    for early in (False, True):
        model.cfg.early_termination = early
        results[early] = evaluate(model, loader, info, TrainState(training=False))
    off, on = results[False], results[True]
    print(f"SoF-Net without early termination: mAP {off['mAP']:.3f}, "
          f"{off['gflops_mean']:.2f} GFLOPs/video; with (rho 0.999, T_min 3): "
          f"mAP {on['mAP']:.3f}, {on['gflops_mean']:.2f} GFLOPs/video")
    assert on["gflops_mean"] < 0.95 * off["gflops_mean"]
    assert off["mAP"] - on["mAP"] <= 0.03
    truth = load_truth(store)
    codes = np.concatenate([r["decisions"] for r in off["records"]])
    informative = np.concatenate([truth[r["id"]] for r in off["records"]])
    stopped = codes < 5
    bg_rate, inf_rate = stopped[~informative].mean(), stopped[informative].mean()
    print(f"frames stopped early: background {bg_rate:.3f}, informative {inf_rate:.3f}")
    assert bg_rate > inf_rate


def test_generator_options_for_early_exit(tmp_path) -> None:
    """`segments=2` puts one class segment in each half of every video; `easy_background`
    makes a share of the background frames stand out at res1 (3x the background amplitude);
    neither adds a parameter to a store made without them."""
    plain = make_synthetic_store(tmp_path / "plain", videos=16, classes=4, seed=2)
    params = json.loads((plain / "synthetic_truth.json").read_text())["params"]
    assert "segments" not in params and "easy_background" not in params
    store = make_synthetic_store(tmp_path / "opts", videos=16, classes=4, seed=2, segments=2,
                                 easy_background=0.5)
    for flags in load_truth(store).values():
        middle = round(len(flags) / 2)
        assert flags[:middle].any() and flags[middle:].any()  # adjacent segments may touch
    def loud_background(path) -> float:
        """Share of background frames whose res1 feature is longer than 5.5."""
        st, truth = open_store(path), load_truth(path)
        norms = np.concatenate([np.linalg.norm(
            st.read_stages(v, "fine")["res1"].astype(np.float64), axis=1)[~truth[v]]
            for v in st.video_ids()])
        return float((norms > 5.5).mean())

    # hard background: |1.5 b + noise| ~ 4.3 in 16 dims; easy: |4.5 b + noise| ~ 6.0
    before, after = loud_background(plain), loud_background(store)
    print(f"background frames with |res1| > 5.5: {before:.2f} without, {after:.2f} with")
    assert after > before + 0.25


def test_batched_step_matches_each_module_stepped_alone(info: StoreInfo) -> None:
    """The forward pass steps the N modules as one batched LSTM step; with every frame fully
    processed (so every state advances) its gate logits equal each module's own step."""
    cfg = sofnet.Config(**SMALL, early_termination=False, layer_skipping=False)
    model = sofnet.build(cfg, info).eval()  # random gate weights: q depends on h
    batch = make_batch(info, [6, 6], seed=3)
    out = model(batch, TrainState(training=False))
    for k, (pm, stage) in enumerate(zip(model.policies, model.stages)):
        inputs = pm.lstm_inputs(batch.stages["fine"][stage])
        h = c = torch.zeros(2, 16)
        for t, x in enumerate(inputs):
            h, c, q = pm.step(x, (h, c))
            assert torch.allclose(out.extras["gate_logits"][:, t, k], q, atol=1e-5)
