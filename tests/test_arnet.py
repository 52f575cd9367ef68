"""AR-Net (trainers/arnet.py) and the straight-through Gumbel helper (trainers/gumbel.py).

Data is generated: hand-built batches of random features for the mechanics (costs, skips,
stages) and the synthetic feature store of trainers/synthetic.py for the learned-vs-random
claim. Costs are the measured ones (backbones.flops.view_cost, trainers.cost.module_gmacs).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from backbones.flops import view_cost
from featstore import open_store
from trainers import arnet, synthetic
from trainers.config import RunConfig
from trainers.cost import module_gmacs
from trainers.data import StoreInfo, ViewInfo, store_info
from trainers.gumbel import annealed_tau, gumbel_softmax_st
from trainers.method import Batch, TrainState
from trainers.methods import ARNET_RUN
from trainers.synthetic import VIEWS, load_truth, make_synthetic_store
from trainers.train import train

LADDER = ("r50_224", "r34_168", "r18_112", "mbv2_84")
#: the paper's skip lengths (sec. 4.1): the mechanics below are written for L + M = 4 + 3 actions
PAPER_SKIPS = (1, 2, 4)
CLASSES = 4


@pytest.fixture(scope="module")
def info() -> StoreInfo:
    """The synthetic store's ladder views with their measured per-frame costs."""
    views = {}
    for name in LADDER:
        spec = VIEWS[name]
        cost = view_cost(spec.backbone, spec.input_size)
        views[name] = ViewInfo(name, spec.dim, spec.backbone, spec.input_size, cost.gmacs, {}, {})
    return StoreInfo(views, [f"c{i}" for i in range(CLASSES)], CLASSES)


def make_batch(info: StoreInfo, lengths: list[int], seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    feats = {
        v: torch.randn(len(lengths), steps, vi.dim, generator=gen) * mask[..., None]
        for v, vi in info.views.items()
    }
    targets = torch.zeros(len(lengths), CLASSES)
    targets[torch.arange(len(lengths)), torch.arange(len(lengths)) % CLASSES] = 1.0
    ids = [f"v{i}" for i in range(len(lengths))]
    return Batch(feats, torch.tensor(lengths), mask, targets, ids)


def force_action(model: arnet.ARNet, action: int) -> None:
    """Make the policy pick `action` on every frame, whatever it sees."""
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.fill_(-50.0)
        model.gate.bias[action] = 50.0


def visit_gmacs(model: arnet.ARNet, info: StoreInfo) -> float:
    """Phi (lowest view) + one LSTM step + gate, measured independently of the model's table."""
    hidden, low = model.cfg.hidden, info.views[LADDER[-1]]
    h = torch.zeros(1, hidden)
    step = module_gmacs(model.lstm, torch.zeros(1, low.dim), (h, h)) + module_gmacs(model.gate, h)
    return low.gmacs_per_frame + step


def head_gmacs(model: arnet.ARNet, info: StoreInfo, i: int) -> float:
    return module_gmacs(model.heads[i], torch.zeros(1, info.views[LADDER[i]].dim))


def test_gumbel_st_is_one_hot_forward_and_soft_backward() -> None:
    logits = torch.randn(6, 5, requires_grad=True)
    weights = torch.randn(6, 5)
    torch.manual_seed(3)
    hard = gumbel_softmax_st(logits, tau=0.7)
    (hard * weights).sum().backward()
    grad_hard = logits.grad.clone()
    logits.grad = None
    torch.manual_seed(3)
    soft = gumbel_softmax_st(logits, tau=0.7, hard=False)
    (soft * weights).sum().backward()
    print("one-hot rows:", hard.detach().tolist())
    assert torch.equal(hard.detach().sum(dim=1), torch.ones(6))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.detach().argmax(dim=1), soft.detach().argmax(dim=1))
    assert grad_hard.abs().sum() > 0
    assert torch.allclose(grad_hard, logits.grad)


def test_gumbel_refuses_non_positive_tau_and_anneals() -> None:
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax_st(torch.zeros(2, 3), tau=0.0)
    assert annealed_tau(5.0, 0.045, 0) == 5.0
    assert annealed_tau(5.0, 0.045, 10) == pytest.approx(5.0 * math.exp(-0.45))


def test_cost_table_matches_measured_costs(info: StoreInfo) -> None:
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS), info)
    visit = visit_gmacs(model, info)
    expected = [
        visit + info.views[v].gmacs_per_frame + head_gmacs(model, info, i)
        for i, v in enumerate(LADDER[:-1])
    ]
    expected += [visit + head_gmacs(model, info, 3)] + [visit] * 3
    print("AR-Net lookup table (GMACs/action):", [round(x, 5) for x in expected])
    assert model.action_gmacs.tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[0] == pytest.approx(4.09 + 0.0516, abs=0.01)  # resnet50@224 + mbv2@84


def test_hand_built_decisions_give_expected_gflops_and_prediction(info: StoreInfo) -> None:
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS), info).eval()
    batch = make_batch(info, [8])
    L, M = 4, 3
    # r50, skip2 (+1 skipped), mbv2, r34, skip4 (+2 skipped, video ends), r18 would be frame 8
    codes = torch.tensor([[0, L + 1, L + M, 3, 1, L + 2, L + M, L + M]])
    probs = torch.zeros(1, 8, L + M)
    for t, a in enumerate(codes[0].tolist()):
        if a < L + M:
            probs[0, t, a] = 1.0
    out = model.predict(batch, probs, codes)
    visit = visit_gmacs(model, info)
    r50, r34 = info.views["r50_224"].gmacs_per_frame, info.views["r34_168"].gmacs_per_frame
    expected = (
        5 * visit + r50 + r34 + sum(head_gmacs(model, info, i) for i in (0, 1, 3))
    )
    print(f"hand-built pattern: {out.gflops.item():.6f} GMACs, expected {expected:.6f}")
    assert out.gflops.item() == pytest.approx(expected, rel=1e-12)
    assert out.frames_used["r50_224"].item() == 1 and out.frames_used["r34_168"].item() == 1
    assert out.frames_used["r18_112"].item() == 0 and out.frames_used["mbv2_84"].item() == 5
    frame_preds = [
        model.heads[0](batch.features["r50_224"][0, 0]),
        model.heads[3](batch.features["mbv2_84"][0, 3]),
        model.heads[1](batch.features["r34_168"][0, 4]),
    ]
    assert torch.allclose(out.logits[0], torch.stack(frame_preds).mean(dim=0), atol=1e-6)


def test_skip_jumps_frames_which_cost_nothing(info: StoreInfo) -> None:
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS), info).eval()
    force_action(model, 5)  # skip F_1 = 2: this frame and the next
    batch = make_batch(info, [7, 4])
    out = model(batch, TrainState(training=False))
    assert out.decisions.tolist() == [[5, 7, 5, 7, 5, 7, 5], [5, 7, 5, 7, -1, -1, -1]]
    visit = visit_gmacs(model, info)
    print("skip2 everywhere:", out.gflops.tolist(), "per visit", visit)
    assert out.gflops.tolist() == pytest.approx([4 * visit, 2 * visit], rel=1e-12)
    assert out.decision_names[5] == "skip2" and out.decision_names[7] == "skipped"


def test_resolution_only_policy_without_skips(info: StoreInfo) -> None:
    """Table 4's "Resolution Only" action space: M = 0."""
    model = arnet.build(arnet.Config(hidden=16, skips=()), info)
    out = model(make_batch(info, [5, 3]), TrainState(stage="joint"))
    assert out.decisions[:, :3].lt(4).all() and out.decisions[1, 3:].eq(-1).all()
    assert model.action_gmacs.numel() == 4


def test_random_policy_follows_given_proportions(info: StoreInfo) -> None:
    props = (0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)  # always resnet18@112
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS, policy="random",
                                     random_proportions=props), info)
    out = model(make_batch(info, [6, 3]), TrainState(training=False))
    per_frame = info.views["r18_112"].gmacs_per_frame + head_gmacs(model, info, 2)
    assert out.gflops.tolist() == pytest.approx([6 * per_frame, 3 * per_frame], rel=1e-12)
    assert out.frames_used["mbv2_84"].tolist() == [0, 0]  # no policy network runs
    torch.manual_seed(0)
    mix = (0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0)
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS, policy="random",
                                     random_proportions=mix), info)
    codes = model(make_batch(info, [64] * 32), TrainState(training=False)).decisions
    share = (codes == 0).float().mean().item()
    print(f"share of r50 under a 50/50 r50/skip1 random policy: {share:.3f}")
    assert set(codes.unique().tolist()) == {0, 4}
    assert abs(share - 0.5) < 0.05


@pytest.mark.parametrize(
    ("stage", "policy_learns"), [("warmup", False), ("joint", True), ("finetune", False)]
)
def test_schedule_stage_freezes_what_it_should(
    info: StoreInfo, stage: str, policy_learns: bool
) -> None:
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS), info)
    model.configure_stage(stage)
    state = TrainState(stage=stage, epoch=1)
    batch = make_batch(info, [10, 8, 9])
    out = model(batch, state)
    loss, parts = model.loss(out, batch, state)
    loss.backward()
    assert all(math.isfinite(v) for v in parts.values())
    policy_grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy_parameters()]
    assert all(policy_grads) if policy_learns else not any(policy_grads)
    assert all(p.grad is not None for p in model.heads.parameters())
    if stage == "warmup":  # uniformly random resolutions, no skip
        valid = out.decisions[batch.mask]
        assert valid.max().item() < 4


def test_default_views_are_the_synthetic_ladder_high_to_low() -> None:
    assert arnet.Config().views == (*synthetic.LADDER, synthetic.POLICY_VIEW)
    sizes = [VIEWS[v].input_size for v in arnet.Config().views]
    assert sizes == sorted(sizes, reverse=True)


def test_schedule_matches_paper_epochs() -> None:
    assert [s for s, _ in arnet.SCHEDULE] == ["warmup", "joint", "finetune"]
    fractions = [f for _, f in arnet.SCHEDULE]
    assert fractions == pytest.approx([10 / 110, 50 / 110, 50 / 110])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"views": ("r50_224", "nope")}, "nope"),
        ({"alpha": 1.5}, "alpha"),
        ({"skips": (2, 1)}, "ascending"),
        ({"policy": "greedy"}, "policy"),
        ({"random_proportions": (1.0, 1.0)}, "random_proportions"),
    ],
)
def test_config_refuses_bad_values(info: StoreInfo, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        arnet.build(arnet.Config(**change), info)


def test_expected_frame_gmacs_counts_frames_consumed_by_skips(info: StoreInfo) -> None:
    model = arnet.build(arnet.Config(hidden=16, skips=PAPER_SKIPS, policy="random"), info)
    r50 = model.action_gmacs[0].item()
    # half the decisions take r50 (1 frame), half skip 4 frames: 1 r50 frame in 5
    assert model.expected_frame_gmacs([0.5, 0, 0, 0, 0, 0, 0.5]) == pytest.approx(r50 / 5)


def test_learned_policy_beats_random_policy_at_equal_or_lower_gflops(tmp_path) -> None:
    """AR-Net's claim (Table 1): the learned policy beats RANDOM at no more compute.

    RANDOM draws actions with the learned policy's decision shares, then moves share from the
    cheapest resolution to the finest one until its expected cost is 5% above the learned
    policy's measured cost (it has no policy network to pay for, so equal shares are cheaper).
    """
    store = make_synthetic_store(tmp_path / "store", videos=160, classes=8, seed=0)

    def run(name: str, cfg: arnet.Config) -> dict:
        rc = RunConfig(method="arnet", store=str(store), out=str(tmp_path / name), epochs=12,
                       batch_size=32, lr=ARNET_RUN["lr"], seed=0, method_config=cfg)
        return json.loads((train(rc) / "eval.json").read_text())

    learned = run("arnet", arnet.Config(hidden=32, skips=PAPER_SKIPS))
    lines = (tmp_path / "arnet" / "predictions.jsonl").read_text().splitlines()
    shares = arnet.action_shares([json.loads(ln)["decisions"] for ln in lines], 7)
    target = 1.05 * learned["gflops_per_frame_mean"]
    table = arnet.build(arnet.Config(hidden=32, skips=PAPER_SKIPS, policy="random"),
                        _store_info(store))
    props = list(shares)
    while table.expected_frame_gmacs(props) < target and props[3] > 0:
        moved = min(0.01, props[3])
        props[3] -= moved
        props[0] += moved
    random = run("random", arnet.Config(hidden=32, skips=PAPER_SKIPS, policy="random",
                                        random_proportions=props))
    print(f"AR-Net learned: mAP {learned['mAP']:.3f} at {learned['gflops_mean']:.2f} "
          f"GFLOPs/video, shares {[round(s, 3) for s in shares]}; random policy with shares "
          f"{[round(s, 3) for s in props]}: mAP {random['mAP']:.3f} at "
          f"{random['gflops_mean']:.2f} GFLOPs/video")
    assert learned["gflops_mean"] <= random["gflops_mean"]
    assert learned["mAP"] > random["mAP"]
    # Fig. 4: informative frames get the finest resolution more often than background ones
    truth = load_truth(store)
    records = [json.loads(ln) for ln in lines]
    codes = np.concatenate([r["decisions"] for r in records])
    informative = np.concatenate([truth[r["id"]] for r in records])
    finest_inf, finest_bg = (codes[informative] == 0).mean(), (codes[~informative] == 0).mean()
    print(f"share of frames sent to r50_224: informative {finest_inf:.3f}, "
          f"background {finest_bg:.3f}")
    assert finest_inf > finest_bg


def _store_info(store) -> StoreInfo:
    return store_info(open_store(store))
