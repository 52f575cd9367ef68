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

`--time-to-target 0.9` instead trains both to a test mAP, each with its own defaults, on the
same generated features: a realistic synthetic store (trainers.synthetic REALISTIC: 24
classes, background-dominated videos, only train and test splits) whose coarse and fine
features are lifted to the official code's hard-coded dims (1280, 2048) by fixed random linear
maps, written once as our HDF5 store and once in the official `.pth` layout
(`features/<id>.pth`, `features_mobile/<id>.pth`, `feas/fcvid/{train,test}_gt.pth`), and read
through its own `datasets.fcvid` (L2-normalised frames, padded batches, no worker processes).
Ours: `c2f train liteeval` defaults through trainers.train (validating on the test split, so
the per-epoch validation mAP is the test mAP). Official: its `main.train` per epoch with its
Adam, weight decay 1e-4, MultiStepLR(40, 80), batch 256, clip 5, tau schedule, at `--official-lr`
(its documented 0.1 turns to NaN). Both: same hidden sizes and fine-usage target. After every
epoch the test mAP is measured (not timed); the table gives training seconds (wall and
process CPU) until the target is first reached, or a lower bound when the official run stops
at `--max-minutes` of CPU time first.

    python benchmarks/bench_official_liteeval.py --official /tmp/lite_eval --threads 1 \
        --time-to-target 0.9 --videos 600
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featstore import StoreWriter, ViewSpec, build_catalog, open_store
from featstore.atomic import atomic_path
from trainers import liteeval, normalize
from trainers.config import resolve_config
from trainers.data import StoreInfo, ViewInfo
from trainers.method import Batch, TrainState
from trainers.metrics import mean_average_precision
from trainers.synthetic import REALISTIC, make_synthetic_store
from trainers.train import train

#: the official model's hard-coded input dims (models/lite_eval.py)
OFFICIAL_DIMS = {"coarse": 1280, "fine": 2048}


def import_official(root: Path):
    """The official LiteEval model class, importable on a CPU-only machine."""
    # logging/progress/glob helpers its modules import at the top but the paths used here
    # never call (tensorboardX, torchnet: utils.py; tqdm: main.validate; glob2: datasets)
    for name in ("tensorboardX", "torchnet", "tqdm", "glob2"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["tensorboardX"].SummaryWriter = None
    sys.modules["torchnet"].meter = None
    sys.modules["tqdm"].tqdm = None
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


def write_lifted(root: Path, videos: int, seed: int) -> tuple[Path, Path]:
    """A realistic synthetic store lifted to the official dims, as our store and its .pth tree.

    Both get the same float16-rounded values; the official labels are one-hot vectors in
    `feas/fcvid/{split}_gt.pth` as its `datasets.fcvid` reads them.
    """
    src = make_synthetic_store(root / "synthetic", videos=videos, seed=seed, **REALISTIC)
    store = open_store(src)
    rng = np.random.default_rng([seed, 2])
    maps = {v: rng.standard_normal((store.read(store.video_ids("train")[0], v).shape[1], d))
            / math.sqrt(d) for v, d in OFFICIAL_DIMS.items()}
    ours, official = root / "store", root / "official"
    done = official / "feas" / "fcvid" / "test_gt.pth"  # written last
    if done.exists():
        return ours, official
    backbones = {"coarse": ("mobilenet_v2", 112), "fine": ("resnet101", 224)}
    writer = StoreWriter(ours, part="lifted-000", views={
        v: ViewSpec(dim=d, backbone=backbones[v][0], input_size=backbones[v][1],
                    attrs={"benchmark": "synthetic features lifted by a random linear map"})
        for v, d in OFFICIAL_DIMS.items()})
    classes = store.classes
    folders = {"fine": official / "features", "coarse": official / "features_mobile"}
    gts: dict[str, dict] = {}
    for split in ("train", "test"):
        gt = gts[split] = {}
        for vid in store.video_ids(split):
            feats = {v: (store.read(vid, v).astype(np.float32) @ m).astype(np.float16)
                     for v, m in maps.items()}
            writer.add_video(vid, labels=store.labels(vid), split=split,
                             timestamps=store.timestamps(vid), features=feats)
            for v, folder in folders.items():
                with atomic_path(folder / f"{vid}.pth") as tmp:
                    torch.save({"fea": torch.from_numpy(feats[v].astype(np.float32))}, tmp)
            onehot = torch.zeros(len(classes))  # a tensor: torch.load(weights_only) reads it
            onehot[[classes.index(c) for c in store.labels(vid)]] = 1.0
            gt[vid] = onehot
    writer.close()
    build_catalog(ours)
    for split, gt in gts.items():
        with atomic_path(official / "feas" / "fcvid" / f"{split}_gt.pth") as tmp:
            torch.save({"gt": gt}, tmp)
    return ours, official


def first_at(rows: list[dict], target: float) -> dict | None:
    """The first epoch row whose test mAP reaches `target`."""
    return next((r for r in rows if r["mAP"] >= target), None)


def ours_to_target(store: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    """Our LiteEval with its defaults through the shared loop, one epoch per call, until the
    target; test mAP and seconds per epoch.

    Wall seconds = the loop's step records (data wait + forward/backward/step), so its
    per-epoch evaluations are not counted. CPU seconds = process CPU time of each one-epoch
    `train` call, which also holds the loop's evaluations and the resume (an upper bound).
    Stopping after an epoch and resuming leaves the run as one uninterrupted run would be."""
    cfg = resolve_config("liteeval", sets=[
        f"coarse_hidden={args.coarse_hidden}", f"fine_hidden={args.fine_hidden}",
        f"gamma={args.fine_target}", "val_split=test", f"threads={args.threads}",
        *args.ours_set], store=str(store), out=str(out))
    print(f"ours: {cfg.epochs} epochs, lr {cfg.lr}, batch {cfg.batch_size}, {cfg.schedule} "
          f"schedule, warm-up {cfg.warmup_epochs} epoch(s)", flush=True)
    rows: list[dict] = []
    wall = cpu = 0.0
    for epoch in range(cfg.epochs):
        c0 = time.process_time()
        train(cfg, stop_after_epochs=1)
        cpu += time.process_time() - c0
        records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        wall += sum(r["data_time"] + r["compute_time"] for r in records
                    if r["kind"] == "step" and r["epoch"] == epoch)
        last = next(r for r in records if r["kind"] == "epoch" and r["epoch"] == epoch)
        rows.append({"epoch": epoch + 1, "elapsed_s": wall, "cpu_s": cpu,
                     "mAP": last["val_mAP"], "fine_usage": last["val_fine_usage"]})
        print(f"ours epoch {epoch + 1}: test mAP {last['val_mAP']:.3f}, fine usage "
              f"{last['val_fine_usage']:.2f}, {wall:.0f} s, {cpu:.0f} CPU s", flush=True)
        if last["val_mAP"] >= args.time_to_target:
            break
    return rows


def official_to_target(root: Path, data: Path, classes: int, args: argparse.Namespace
                       ) -> list[dict]:
    """The official main.train, epoch by epoch on its own data pipeline, until the target."""
    import_official(root)
    import main as official_main
    from datasets import fcvid
    from models.lite_eval import LiteEval as Official
    from torch.optim.lr_scheduler import MultiStepLR
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = Official(types.SimpleNamespace(large_cell_size=args.fine_hidden,
                                           small_cell_size=args.coarse_hidden, tau=0.5,
                                           num_frames=129), num_classes=classes)
    # its logging-only top-k accuracy calls .view() on a transposed tensor, which current
    # torch refuses: same numbers with .reshape()
    official_main.accuracy = topk_accuracy
    # main.train reads these globals: gamma is the target share of SKIPPED frames there
    official_main.args = types.SimpleNamespace(gamma=1.0 - args.fine_target, epochs=500,
                                               print_freq=10)
    criterion, penalty = torch.nn.CrossEntropyLoss(), torch.nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=args.official_lr, weight_decay=1e-4)
    scheduler = MultiStepLR(opt, milestones=[40, 80])
    cwd = os.getcwd()
    os.chdir(data)  # its dataset reads ./feas, ./features, ./features_mobile
    try:
        train_set, test_set = fcvid.FCVID("train", small=True), fcvid.FCVID("test", small=True)
        loader = DataLoader(train_set, batch_size=args.official_batch, shuffle=True,
                            collate_fn=fcvid.collate, num_workers=0)
        test_loader = DataLoader(test_set, batch_size=args.official_batch, shuffle=False,
                                 collate_fn=fcvid.collate, num_workers=0)
        rows, wall, cpu = [], 0.0, 0.0
        for epoch in range(args.max_epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            scheduler.step()  # main.main steps the scheduler before each epoch
            with contextlib.redirect_stdout(io.StringIO()):
                official_main.train(loader, model, criterion, penalty, opt, epoch, 0)
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            row = {"epoch": epoch + 1, "elapsed_s": wall, "cpu_s": cpu,
                   **official_test_map(model, test_loader, test_set, classes)}
            rows.append(row)
            print(f"official epoch {row['epoch']}: test mAP {row['mAP']:.3f}, fine usage "
                  f"{row['fine_usage']:.2f}, {wall:.0f} s, {cpu:.0f} CPU s", flush=True)
            if row["mAP"] >= args.time_to_target or cpu > 60 * args.max_minutes:
                break
    finally:
        os.chdir(cwd)
    return rows


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """The official main.accuracy (precision@k in percent) with reshape instead of view."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.reshape(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0))
            for k in topk]


def official_test_map(model, loader, dataset, classes: int) -> dict:
    """Test mAP of the official model (softmax scores, our metric) and its fine-frame share."""
    model.eval()
    scores, targets, fine = [], [], []
    with torch.no_grad():
        for (fine_x, _, coarse_x), target, _ in loader:
            logits, r_stack = model(fine_x, coarse_x)
            scores.append(F.softmax(logits, dim=1).numpy())
            targets.append(F.one_hot(target.view(-1), classes).numpy())
            fine.append(float(r_stack[..., 0].float().mean()))  # index 0 = fine RNN updated
    model.train()
    result = mean_average_precision(np.concatenate(scores), np.concatenate(targets))
    return {"mAP": float(result.map), "fine_usage": float(np.mean(fine))}


def time_to_target(args: argparse.Namespace) -> None:
    """Train both LiteEvals to `args.time_to_target` test mAP and print the table."""
    root = args.keep or Path(tempfile.mkdtemp(prefix="liteeval_ttt_"))
    t0 = time.perf_counter()
    store, data = write_lifted(root, args.videos, args.seed)
    info = open_store(store)
    n_train, n_test = len(info.video_ids("train")), len(info.video_ids("test"))
    classes = len(info.classes)
    print(f"data: {n_train} train / {n_test} test videos, {classes} classes, REALISTIC "
          f"synthetic lifted to 1280/2048 dims ({time.perf_counter() - t0:.0f} s to write); "
          f"hidden {args.coarse_hidden}/{args.fine_hidden}, fine-usage target "
          f"{args.fine_target}, {args.threads} thread(s), torch {torch.__version__}",
          flush=True)
    shutil.rmtree(root / "ours_run", ignore_errors=True)  # a kept run would only resume
    ours = ours_to_target(store, root / "ours_run", args)
    official = official_to_target(args.official, data, classes, args)
    print(f"\n| trainer | epochs to {args.time_to_target:.2f} | training wall s | training CPU s "
          "| test mAP then | CPU s/epoch |")
    print("|---|---|---|---|---|---|")
    reached = {}
    for name, rows in (("official", official), ("ours", ours)):
        hit = first_at(rows, args.time_to_target)
        end = hit or rows[-1]
        when = (f"{hit['epoch']} | {hit['elapsed_s']:.0f} | {hit['cpu_s']:.0f}" if hit else
                f"not in {len(rows)} | > {end['elapsed_s']:.0f} | > {end['cpu_s']:.0f}")
        print(f"| {name} | {when} | {end['mAP']:.3f} | {end['cpu_s'] / end['epoch']:.1f} |")
        reached[name] = hit
    mine, theirs = reached["ours"], reached["official"]
    if mine:
        bound = "" if theirs else "at least "
        theirs = theirs or official[-1]
        print(f"\nours reaches {args.time_to_target:.2f} test mAP {bound}"
              f"{theirs['elapsed_s'] / mine['elapsed_s']:.2f}x faster in wall seconds, {bound}"
              f"{theirs['cpu_s'] / mine['cpu_s']:.2f}x in CPU seconds")


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
    parser.add_argument("--time-to-target", type=float, default=None,
                        help="train both to this test mAP instead of timing steps")
    parser.add_argument("--fine-target", type=float, default=0.1,
                        help="target share of fine frames (ours gamma; official 1 - gamma)")
    parser.add_argument("--official-lr", type=float, default=1e-3,
                        help="official Adam lr (its documented 0.1 turns to NaN)")
    parser.add_argument("--official-batch", type=int, default=256, help="its main.py default")
    parser.add_argument("--max-epochs", type=int, default=100, help="official epochs at most")
    parser.add_argument("--max-minutes", type=float, default=15.0,
                        help="stop the official run after this much training CPU time")
    parser.add_argument("--seed", type=int, default=0, help="synthetic store seed")
    parser.add_argument("--ours-set", action="append", default=[],
                        help="extra KEY=VALUE for our run (default: none, its defaults)")
    parser.add_argument("--keep", type=Path, default=None, help="keep data and runs here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.time_to_target is not None:
        time_to_target(args)
        return
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
