"""Seconds per training epoch: our LiteEval against the official LiteEval code, side by side.

The official code (github.com/zxwu/lite_eval) is never part of this repository: fetch it and
check it out outside, e.g. /tmp/lite_eval, and pass `--official /tmp/lite_eval`. Its model is
imported unchanged; the minimal changes to run it on CPU are made here at import time and are
listed in benchmarks/README.md: `Tensor.cuda` returns the tensor itself (its training code and
`utils.gumbel_softmax` call `.cuda()` unconditionally), and `utils.py`'s imports of
tensorboardX and torchnet (used only for logging and for `cal_map`, not called here) are
satisfied by empty modules.

Both models train on the same random features (coarse D=1280, fine D=2048, the dims its code
hard-codes; T frames per video, every video full length), same hidden sizes, same batch, with
one training step as its main.py does it (cross-entropy + usage MSE, backward, gradient norm
clipped at 5, Adam lr 1e-3) and as our loop does it (ours: trainers.liteeval loss, clip 5, Adam
lr 1e-3, features standardised by the loop's FeatureNorm). Times are process CPU seconds, median
over `--repeats` steps after one warm-up step, times steps per epoch.

    python benchmarks/bench_official_liteeval.py --official /tmp/lite_eval --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers import liteeval, normalize
from trainers.data import StoreInfo, ViewInfo
from trainers.method import Batch, TrainState


def import_official(root: Path):
    """The official LiteEval model class, importable on a CPU-only machine."""
    for name in ("tensorboardX", "torchnet"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["tensorboardX"].SummaryWriter = None
    sys.modules["torchnet"].meter = None
    torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(root))
    from models.lite_eval import LiteEval as Official

    return Official


def step_timer(step, repeats: int) -> float:
    """Median process CPU seconds of `step()` over `repeats` calls after one warm-up."""
    step()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        step()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def time_official(official_cls, fine, coarse, label, t: int, args) -> float:
    """Seconds per training step of the official model, as its main.py's train() does it."""
    torch.manual_seed(0)
    official = official_cls(types.SimpleNamespace(
        large_cell_size=args.fine_hidden, small_cell_size=args.coarse_hidden, tau=0.5,
        num_frames=t), num_classes=args.classes)
    official.train()
    opt = torch.optim.Adam(official.parameters(), lr=1e-3, weight_decay=1e-4)

    def step() -> None:  # CE + MSE usage penalty, clip 5, Adam
        output, r_stack = official(fine, coarse, 1.0)
        usage = r_stack[:, :, 1].sum(0) / r_stack.size(0)
        loss = F.cross_entropy(output, label) + F.mse_loss(usage.mean(), torch.tensor(0.3))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(official.parameters(), 5)
        opt.step()

    return step_timer(step, args.repeats)


def time_ours(info: StoreInfo, fine, coarse, label, t: int, args) -> float:
    """Seconds per training step of trainers.liteeval, as the shared loop does it."""
    bsz = fine.shape[0]
    torch.manual_seed(0)
    ours = liteeval.build(liteeval.Config(coarse_hidden=args.coarse_hidden,
                                          fine_hidden=args.fine_hidden, gamma=0.3), info)
    batch = Batch({"coarse": coarse, "fine": fine}, torch.full((bsz,), t),
                  torch.ones(bsz, t, dtype=torch.bool), F.one_hot(label, args.classes).float(),
                  [""] * bsz)
    normalize.attach(ours, info, [batch])
    opt = torch.optim.Adam(ours.parameters(), lr=1e-3, weight_decay=1e-4)
    state = TrainState(epoch=1)

    def step() -> None:
        out = ours(batch, state)
        loss, _ = ours.loss(out, batch, state)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 5)
        opt.step()

    return step_timer(step, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of lite_eval")
    parser.add_argument("--frames", default="60,120", help="comma-separated T values")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--videos", type=int, default=1200, help="training videos per epoch")
    parser.add_argument("--coarse-hidden", type=int, default=64)
    parser.add_argument("--fine-hidden", type=int, default=256)
    parser.add_argument("--classes", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official_cls = import_official(args.official)
    bsz, classes = args.batch_size, args.classes
    steps = math.ceil(args.videos / bsz)
    info = StoreInfo(views={"coarse": ViewInfo("coarse", 1280, "mobilenet_v2", 112, 0.0, {}, {}),
                            "fine": ViewInfo("fine", 2048, "resnet101", 224, 0.0, {}, {})},
                     classes=[str(c) for c in range(classes)], num_classes=classes)
    print(f"LiteEval, hidden {args.coarse_hidden}/{args.fine_hidden}, batch {bsz}, "
          f"{args.videos} videos/epoch, {args.threads} thread(s), torch {torch.__version__}")
    print("| T | official s/epoch | ours s/epoch | ours speed-up |")
    print("|---|---|---|---|")
    for t in (int(x) for x in args.frames.split(",")):
        g = torch.Generator().manual_seed(t)
        fine, coarse = torch.randn(bsz, t, 2048, generator=g), torch.randn(bsz, t, 1280, generator=g)
        label = torch.arange(bsz) % classes
        t_off = time_official(official_cls, fine, coarse, label, t, args) * steps
        t_ours = time_ours(info, fine, coarse, label, t, args) * steps
        print(f"| {t} | {t_off:.1f} | {t_ours:.1f} | {t_off / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
