"""SoF-Net end to end (trainers/finetune_sofnet.py): in training a frame stopped at policy
module k does not run the backbone stages after it, its cost counts only what it ran, and
gradients still reach the policy; in evaluation the live path equals the cached-feature one."""

from __future__ import annotations

import pytest
import torch

from pipeline.extract import parse_view
from trainers.encoder import ClipEncoder
from trainers.finetune_sofnet import StopOrForward
from trainers.method import TrainState
from trainers.methods import method_spec

STAGES = ("res1", "res2", "res3", "res4", "res5")


def _model(**config) -> StopOrForward:
    torch.manual_seed(0)
    encoder = ClipEncoder([parse_view("fine=resnet18@32")], with_stages=True)
    spec = method_spec("sofnet")
    cfg = spec.config_type()(hidden=8, embed=8, mlp_hidden=8, early_termination=False,
                             **config)
    return StopOrForward(encoder, spec.build(cfg, encoder.store_info(["a", "b", "c"])))


def _clips(bsz: int = 3, frames: int = 4) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    torch.manual_seed(1)
    return (torch.randn(bsz, frames, 3, 32, 32), torch.eye(3)[torch.arange(bsz) % 3],
            [f"v{i}" for i in range(bsz)])


def _expected_cost(model: StopOrForward, codes: torch.Tensor) -> torch.Tensor:
    """GMACs per video from the decision codes alone (stages and modules reached, and the
    tail + MLP of used frames), as trainers/sofnet.py counts them."""
    m = model.method
    n = len(m.stages)
    reached = torch.arange(n)[None, None, :] <= codes.clamp(max=n - 1)[:, :, None]
    cost = (reached.to(torch.float64) * m.reach_gmacs).sum(dim=2)
    return (cost + (codes == n).to(torch.float64) * m.tail_gmacs).sum(dim=1)


def test_stopped_frames_skip_later_stages_and_pay_only_what_they_ran():
    model = _model(tau0=0.5).train()
    state = TrainState(stage="joint", training=True)
    with torch.no_grad():  # module at res3 stops about half the frames (Gumbel sampling)
        model.method.policies[2].gate.bias.copy_(torch.tensor([0.0, 0.0]))
    clips, targets, ids = _clips()
    out, batch = model(clips, targets, ids, state)
    counts, codes = out.extras["stage_frames"], out.decisions
    print(f"\nframes per stage {counts}; decisions {codes.tolist()}")
    assert counts["res1"] == codes.numel()
    for k, stage in enumerate(STAGES[1:]):  # stage k+1 runs on frames module k forwarded
        assert counts[stage] == int((codes > k).sum())
    assert counts["res5"] < counts["res1"]  # some frames stopped early ...
    assert (codes == len(STAGES)).any()  # ... and some ran the whole backbone
    torch.testing.assert_close(out.gflops, _expected_cost(model, codes))
    loss, _ = model.method.loss(out, batch, state)
    loss.backward()
    for k in (0, 2):  # the policy learns through the straight-through Gumbel signals
        assert model.method.policies[k].gate.weight.grad.abs().sum() > 0
    assert model.encoder.backbones["fine"].layer4[0].conv1.weight.grad.abs().sum() > 0


def test_warmup_forwards_every_frame_through_every_stage():
    model = _model().train()
    clips, targets, ids = _clips()
    out, _ = model(clips, targets, ids, TrainState(stage="warmup", training=True))
    assert set(out.extras["stage_frames"].values()) == {clips.shape[0] * clips.shape[1]}


@pytest.mark.parametrize("bias", [0.0, 3.0])
def test_live_path_equals_the_cached_path_in_evaluation(bias):
    model = _model(forward_bias=bias).eval()
    state = TrainState(stage="joint", training=False)
    clips, targets, ids = _clips()
    with torch.no_grad():
        live, _ = model.live_forward(clips, targets, ids, state)
        cached, _ = model(clips, targets, ids, state)  # all-stage features, SoFNet.forward
    assert torch.equal(live.decisions, cached.decisions)
    torch.testing.assert_close(live.logits, cached.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(live.gflops, cached.gflops)
