"""C2F coarse-exit ensemble and its budget controller, on generated data: unit behaviour with
random-init models and hand-built batches, then short trainings on the synthetic feature store
(trainers/synthetic.py, 400 videos of 12-24 frames, tiny dims; pathways r18_112 -> r34_168 ->
fine, costs of resnet18@112, resnet34@168, resnet101@224). The budget stream cycles the 80
test videos for 600 recognitions (inference on cached features is cheap). Figures are printed
(run with -s).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from trainers import c2f, normalize
from trainers.budget import BudgetController
from trainers.config import RunConfig, config_from_dict, resolve_config
from trainers.data import StoreInfo, ViewInfo, make_loader
from trainers.method import Batch, TrainState
from trainers.rundir import RunDir
from trainers.synthetic import make_synthetic_store
from trainers.train import evaluate, load_run, train

VIEWS = ["r18_112", "r34_168", "fine"]


def tiny_info(classes: int = 4) -> StoreInfo:
    views = {
        "coarse": ViewInfo("coarse", 6, "mobilenet_v2", 112, 0.1, {}, {}),
        "mid": ViewInfo("mid", 7, "resnet34", 168, 2.0, {}, {}),
        "fine": ViewInfo("fine", 8, "resnet101", 224, 8.0, {}, {}),
    }
    return StoreInfo(views=views, classes=[f"c{i}" for i in range(classes)], num_classes=classes)


def tiny_batch(lengths: list[int], classes: int = 4) -> Batch:
    g = torch.Generator().manual_seed(0)
    t = max(lengths)
    lens = torch.tensor(lengths)
    mask = torch.arange(t)[None, :] < lens[:, None]
    feats = {v: torch.randn(len(lengths), t, d, generator=g) * mask[..., None]
             for v, d in (("coarse", 6), ("mid", 7), ("fine", 8))}
    targets = torch.zeros(len(lengths), classes)
    targets[torch.arange(len(lengths)), torch.arange(len(lengths)) % classes] = 1
    return Batch(feats, lens, mask, targets, [f"v{i}" for i in range(len(lengths))])


@pytest.mark.parametrize("beta", [0.0, 1.0, 1.7])
def test_folded_fusion_gives_the_same_outputs(beta):
    torch.manual_seed(0)
    layer = c2f.ReparamLinear(12, 4, beta)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(5, 12)
    assert torch.allclose(layer.fold()(x), layer(x), atol=1e-5)
    if beta == 0.0:  # eq. 1 at beta = 0 is the plain layer
        assert torch.allclose(layer.folded_weight(), layer.weight)


def test_folded_model_matches_unfolded_model():
    torch.manual_seed(0)
    model = c2f.build(c2f.Config(views=["coarse", "mid", "fine"]), tiny_info()).eval()
    with torch.no_grad():
        model.fusion.weight.normal_()
    batch = tiny_batch([5, 3, 4])
    before = model(batch, TrainState(training=False)).extras["fused_logits"]
    model.fold()
    assert isinstance(model.fusion, torch.nn.Linear)
    after = model(batch, TrainState(training=False)).extras["fused_logits"]
    assert torch.allclose(before, after, atol=1e-5)


def test_calibrated_confidence_follows_eq5_and_the_cascade_exits_early():
    model = c2f.build(c2f.Config(views=["coarse", "mid", "fine"]), tiny_info())
    model.train_errors.copy_(torch.tensor([0.4, 0.2, 0.1, 0.1]))
    logits = torch.log(torch.tensor([[[0.7, 0.1, 0.1, 0.1]] * 3]))
    conf = model.calibrated_confidence(logits)
    assert torch.allclose(conf, torch.tensor([[1 - 0.3 * 4, 1 - 0.3 * 2, 1 - 0.3 * 1]]))
    confidence = torch.tensor([[0.9, 0.2, 0.0], [0.1, 0.8, 0.0], [0.1, 0.2, 0.99]])
    assert c2f.cascade_exit(confidence, 0.5).tolist() == [0, 1, 2]
    assert c2f.cascade_exit(confidence, 0.95).tolist() == [2, 2, 2]


def test_cost_of_an_exit_is_the_pathways_that_ran():
    model = c2f.build(c2f.Config(views=["coarse", "mid", "fine"]), tiny_info()).eval()
    model.train_errors.copy_(torch.tensor([0.3, 0.2, 0.1, 0.1]))
    batch = tiny_batch([5, 3])
    costs = model.exit_costs(batch.lengths)
    per_frame = [g + h for g, h in zip(model.view_gmacs, model.head_gmacs)]
    assert torch.allclose(costs[0], torch.tensor([5 * per_frame[0], 5 * sum(per_frame[:2]),
                                                  5 * sum(per_frame) + model.fusion_gmacs],
                                                 dtype=torch.float64))
    model.cfg.exit_threshold = -1e9  # everything exits at the coarsest pathway
    out = model(batch, TrainState(training=False))
    assert torch.allclose(out.gflops, costs[:, 0])
    assert out.frames_used["fine"].tolist() == [0, 0]
    assert out.decisions[1].tolist() == [0, 0, 0, -1, -1]


@pytest.mark.parametrize("pool", ["lse", "mean", "topk"])
def test_pathway_pools_only_the_valid_frames(pool):
    torch.manual_seed(0)
    path = c2f.Pathway(6, 4, 0, 0.0, pool, topk=0.4).eval()
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    z = path.head(x[0, :3])
    expected = {"lse": torch.logsumexp(z, 0) - math.log(3), "mean": z.mean(0),
                "topk": z.topk(2, dim=0).values.mean(0)}[pool]  # ceil(0.4 * 3) = 2 frames
    out = path(x, mask)
    assert torch.allclose(out[0], expected, atol=1e-6)
    x[0, 3:] = 100.0  # padding never counts
    assert torch.allclose(path(x, mask), out, atol=1e-6)


def test_runs_written_before_pool_existed_reload_with_the_mean():
    saved = resolve_config("c2f", store="s", out="o").to_dict()
    assert saved["method_config"]["pool"] == "lse"
    del saved["method_config"]["pool"]
    assert config_from_dict(saved).method_config.pool == "mean"


def test_a_run_written_before_pool_existed_resumes_as_mean_and_refuses_lse(tmp_path):
    """Its config.json has no `pool`: it is the same run as `pool=mean` (finished: nothing
    redone), and a different run from today's default, which is refused by name."""
    store = make_synthetic_store(tmp_path / "s", videos=24, classes=4, frames=(6, 8), seed=2)
    sets = ["epochs=1", "batch_size=8", "views=coarse,fine"]
    old = resolve_config("c2f", sets=[*sets, "pool=mean"], store=str(store),
                         out=str(tmp_path / "run"))
    run = train(old)
    files = RunDir(run)
    saved = json.loads(files.config.read_text())
    del saved["method_config"]["pool"]
    files.config.write_text(json.dumps(saved))
    finished = files.eval.stat().st_mtime_ns
    assert train(old) == run and files.eval.stat().st_mtime_ns == finished
    with pytest.raises(ValueError, match="method_config.pool"):
        train(resolve_config("c2f", sets=sets, store=str(store), out=str(run)))


@pytest.mark.parametrize(
    "change, name",
    [({"beta": 2.5}, "beta"), ({"views": ["coarse", "nope"]}, "nope"),
     ({"views": ["fine"]}, "views"), ({"mode": "teacher"}, "mode"), ({"alpha": 1.5}, "alpha"),
     ({"pool": "max"}, "pool"), ({"topk": 0.0}, "topk")],
)
def test_bad_config_is_refused_naming_the_value(change, name):
    with pytest.raises(ValueError, match=name):
        c2f.build(c2f.Config(**change), tiny_info())


def test_controller_follows_a_budget_step_on_a_known_cost_curve():
    """A stream whose coarse confidence is uniform in [0, 1]: exit when s > T."""
    rng = np.random.default_rng(0)
    ctl = BudgetController(t_low=0.0)
    budgets = [3.0] * 500 + [7.0] * 500
    costs = []
    for i, s in enumerate(rng.uniform(size=1000)):
        cost = 1.0 if s > ctl.threshold else 10.0
        costs.append(cost)
        ctl.update(budgets[min(i + 1, 999)], cost, 10.0)
    assert abs(np.mean(costs[100:500]) / 3.0 - 1) < 0.1
    assert abs(np.mean(costs[600:]) / 7.0 - 1) < 0.1


@pytest.mark.parametrize("rule", ["secant", "printed"])
def test_controller_raises_t_under_budget_and_lowers_it_over_budget(rule):
    for cost, direction in ((2.0, 1), (9.0, -1)):
        ctl = BudgetController(t_low=0.0, t_init=0.5, rule=rule)
        new = ctl.update(budget=5.0, cost=cost, full_cost=10.0)
        assert (new - 0.5) * direction > 0


# -- trained ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("c2f") / "store"
    return make_synthetic_store(path, videos=400, classes=8, frames=(12, 24), seed=1)


def run_config(store, out, mode: str = "joint", epochs: int = 6) -> RunConfig:
    return RunConfig(method="c2f", store=str(store), out=str(out), epochs=epochs, batch_size=32,
                     lr=5e-3, seed=0, method_config=c2f.Config(views=VIEWS, mode=mode))


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A joint C2F run and its model with the training error rates measured."""
    run = train(run_config(store, tmp_path_factory.mktemp("c2f_runs") / "joint"))
    _, model, store_, info = load_run(run)
    stored = model.train_errors.clone()  # measured by the spec's post-training hook
    rates = c2f.measure_training_errors(model, make_loader(store_, VIEWS, "train", 64, False))
    return model, store_, info, rates, stored


def test_training_error_rates_are_measured_and_kept_in_the_checkpoint(trained):
    model, _, info, rates, stored = trained
    print(f"\ntraining error rates {VIEWS} + ensemble: {[round(float(r), 4) for r in rates]}")
    assert torch.all((rates > 0) & (rates < 1))
    assert rates[0] > rates[-1]  # the coarsest pathway errs more than the ensemble
    assert torch.allclose(stored.double(), rates)  # best.pt already held the same rates
    clone = normalize.attach(c2f.build(c2f.Config(views=VIEWS), info), info)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.train_errors, model.train_errors.float())


def test_lower_threshold_exits_earlier_and_costs_less(trained):
    model, store_, info, *_ = trained
    loader = make_loader(store_, VIEWS, "test", 64, False)
    # thresholds from the spread of eq. 5's calibrated confidence of the first exit on these
    # videos (its scale depends on how few training errors the ensemble makes)
    conf = torch.cat([model.calibrated_confidence(model.pathway_logits(normalize.apply(
        model, b.to("cpu"))))[:, 0] for b in loader]).detach()
    qs = [float(torch.quantile(conf, q)) for q in (0.9, 0.5, 0.1)]
    rows = []
    for t in (None, *qs, float(conf.min()) - 1.0):
        model.cfg.exit_threshold = t
        r = evaluate(model, loader, info, TrainState(training=False))
        rows.append((t, r["mAP"], r["top1"], r["gflops_mean"]))
    model.cfg.exit_threshold = None
    print("\nT       mAP    top1   GFLOPs/video")
    for t, m, a, g in rows:
        print(f"{t!s:<7} {m:.3f}  {a:.3f}  {g:.1f}")
    costs = [g for *_, g in rows]
    assert all(a >= b for a, b in itertools.pairwise(costs))
    assert costs[-1] < 0.2 * costs[0]


def test_controller_keeps_the_running_cost_on_budget_and_follows_a_step(trained):
    model, store_, *_ = trained
    loader = make_loader(store_, VIEWS, "test", 64, False)
    lengths = torch.cat([b.lengths for b in loader])
    full, coarse = model.exit_costs(lengths).mean(0)[[-1, 0]].tolist()
    low, high = coarse + 0.3 * (full - coarse), coarse + 0.7 * (full - coarse)
    budgets = [low] * 300 + [high] * 300
    result = c2f.budget_run(model, loader, budgets)
    cost = np.asarray(result["cost"])
    before, after = cost[100:300].mean(), cost[400:600].mean()
    print(f"\nB={low:.1f} -> mean cost {before:.1f} over videos 100-299 ({before / low:.3f} B); "
          f"B={high:.1f} from video 300 -> {after:.1f} over 400-599 ({after / high:.3f} B); "
          f"top1 {result['top1']:.3f}; full ensemble {full:.1f}, coarsest {coarse:.1f}")
    assert abs(before / low - 1) < 0.1
    assert abs(after / high - 1) < 0.1
    assert len(result["threshold"]) == 600


def test_classroom_mode_freezes_the_teacher_after_training_it(store, tmp_path):
    cfg = run_config(store, tmp_path / "classroom", mode="classroom", epochs=5)
    run = train(cfg, stop_after_epochs=2)  # SCHEDULE: teacher for 2 of 5 epochs
    teacher = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    train(cfg)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    fine_keys = [k for k in final if k.startswith("pathways.2.")]
    coarse_keys = [k for k in final if k.startswith("pathways.0.")]
    assert fine_keys and all(torch.equal(teacher[k], final[k]) for k in fine_keys)
    assert any(not torch.equal(teacher[k], final[k]) for k in coarse_keys)
