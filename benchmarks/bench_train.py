"""LiteEval training throughput on CPU at the paper's FCVID sizes, through the shared loop.

Writes a feature store of random features with real dims (coarse: mobilenet_v2@112, D=1280;
fine: resnet101@224, D=2048; `--frames` frames per video, 1 fps) to disk, trains LiteEval with
the FCVID RNN sizes (coarse LSTM 512, fine LSTM 2048; LiteEval sec. 4.1) with
trainers.train.train, then reads the run's metrics.jsonl and prints, per epoch: videos/s, the
time spent waiting for data and in forward/backward/step, and the data-loading share
data_time / (data_time + compute_time). Epoch 0 reads HDF5; later epochs hit the loader's
in-memory cache.

    python benchmarks/bench_train.py --videos 64 --frames 60 --epochs 2

`--scaling 60,120,200` instead times LiteEval training steps (forward, backward, Adam step) on
random batches of T frames for each T, with the one-pass formulation (trainers/recurrence.py)
and, side by side in the same process, the stepped formulation it replaced (torch cells on
`x[:, t]`), and prints seconds per epoch of `--videos` videos and seconds per frame: the
one-pass cost per frame stays flat as T grows, the stepped one grows with T.

    python benchmarks/bench_train.py --scaling 60,120,200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featstore import StoreWriter, ViewSpec, build_catalog
from trainers import liteeval
from trainers.config import RunConfig
from trainers.train import train


def write_store(path: Path, videos: int, frames: int, classes: int, val: int) -> None:
    """Random float16 features with the real backbones' dims; labels cycle over classes."""
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, part="bench-000", views={
        "coarse": ViewSpec(dim=1280, backbone="mobilenet_v2", input_size=112,
                           attrs={"benchmark": "random features"}),
        "fine": ViewSpec(dim=2048, backbone="resnet101", input_size=224,
                         attrs={"benchmark": "random features"}),
    })
    for i in range(videos + val):
        writer.add_video(
            f"bench{i:05d}", labels=[f"class{i % classes:03d}"],
            split="train" if i < videos else "val",
            timestamps=np.arange(frames, dtype=np.float64),
            features={"coarse": rng.standard_normal((frames, 1280)).astype(np.float16),
                      "fine": rng.standard_normal((frames, 2048)).astype(np.float16)})
    writer.close()
    build_catalog(path)


def summarise(metrics: Path) -> list[dict]:
    """Per-epoch totals of the loop's step records."""
    rows: dict[int, dict] = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] != "step":
            continue
        row = rows.setdefault(rec["epoch"], {"epoch": rec["epoch"], "steps": 0, "data": 0.0,
                                             "compute": 0.0})
        row["steps"] += 1
        row["data"] += rec["data_time"]
        row["compute"] += rec["compute_time"]
    return [rows[k] for k in sorted(rows)]


class SteppedLiteEval(liteeval.LiteEval):
    """The formulation before trainers/recurrence.py: cells stepped on x[:, t] (for timing)."""

    def forward(self, batch, state):
        vc, vf = batch.features[self.cfg.coarse_view], batch.features[self.cfg.fine_view]
        coarse_seq = self._coarse_states(vc)
        zeros = vc.new_zeros(vc.shape[0], self.cfg.fine_hidden)
        fine, gates = [zeros, zeros.clone()], []
        for t in range(vc.shape[1]):
            valid = batch.mask[:, t].unsqueeze(1)
            b, _ = self._decide(self.gate(torch.cat([vc[:, t], fine[0]], dim=1)), state)
            new = list(self.fine_rnn(torch.cat([vc[:, t], vf[:, t]], dim=1), tuple(fine)))
            skipped = [torch.cat([h[:, t], f[:, self.cfg.coarse_hidden:]], dim=1)
                       for h, f in zip(coarse_seq, fine)]
            mixed = [b[:, None] * n + (1 - b[:, None]) * k for n, k in zip(new, skipped)]
            fine = [torch.where(valid, m, o) for m, o in zip(mixed, fine)]
            gates.append(b * batch.mask[:, t])
        gate_t = torch.stack(gates, dim=1)
        frac = gate_t.sum(dim=1) / batch.lengths.clamp_min(1)
        return liteeval.MethodOutput(logits=self.classifier(fine[0]), gflops=frac.detach(),
                                     frames_used={}, decisions=gate_t.long(), decision_names={},
                                     extras={"fine_fraction": frac, "log_probs": gate_t})


def time_scaling(frames: list[int], args: argparse.Namespace) -> None:
    """Seconds per training epoch at each T, one-pass vs stepped formulation, side by side."""
    from trainers.data import StoreInfo, ViewInfo
    from trainers.method import Batch, TrainState

    dc, df, classes, bsz = args.coarse_dim, args.fine_dim, 24, args.batch_size
    info = StoreInfo(views={"coarse": ViewInfo("coarse", dc, "mobilenet_v2", 112, 0.0, {}, {}),
                            "fine": ViewInfo("fine", df, "resnet101", 224, 0.0, {}, {})},
                     classes=[str(c) for c in range(classes)], num_classes=classes)
    mc = liteeval.Config(coarse_hidden=args.coarse_hidden, fine_hidden=args.fine_hidden,
                         gamma=0.3, readout="last", baseline_head=False)
    steps_per_epoch = -(-args.videos // bsz)
    print(f"LiteEval LSTM {args.coarse_hidden}/{args.fine_hidden}, features {dc}/{df}, batch "
          f"{bsz}, {args.videos} videos/epoch, {args.threads} thread(s), median of "
          f"{args.repeats} steps (process CPU seconds), torch {torch.__version__}")
    print("| T | one-pass s/epoch | stepped s/epoch | speed-up | one-pass ms/frame-step |")
    print("|---|---|---|---|---|")
    for t in frames:
        g = torch.Generator().manual_seed(t)
        batch = Batch({"coarse": torch.randn(bsz, t, dc, generator=g),
                       "fine": torch.randn(bsz, t, df, generator=g)},
                      torch.full((bsz,), t), torch.ones(bsz, t, dtype=torch.bool),
                      torch.eye(classes)[torch.arange(bsz) % classes], [""] * bsz)
        medians = []
        for cls in (liteeval.LiteEval, SteppedLiteEval):
            torch.manual_seed(0)
            model = cls(mc, info)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            state, times = TrainState(epoch=1), []
            for _ in range(args.repeats + 1):
                t0 = time.process_time()  # CPU time of this process: robust to other load
                out = model(batch, state)
                loss = torch.nn.functional.cross_entropy(out.logits, batch.targets)
                loss = loss + (out.extras["fine_fraction"] - 0.3).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.process_time() - t0)
            medians.append(float(np.median(times[1:])))
        new, old = (m * steps_per_epoch for m in medians)
        print(f"| {t} | {new:.2f} | {old:.2f} | {old / new:.2f}x | "
              f"{1000 * medians[0] / t:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64, help="training videos")
    parser.add_argument("--frames", type=int, default=60, help="frames per video (1 fps)")
    parser.add_argument("--classes", type=int, default=239, help="classes (FCVID: 239)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--coarse-hidden", type=int, default=512)
    parser.add_argument("--fine-hidden", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the store and run under this directory")
    parser.add_argument("--scaling", default=None,
                        help="comma-separated T values: time training steps at each T instead")
    parser.add_argument("--coarse-dim", type=int, default=1280)
    parser.add_argument("--fine-dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per T (--scaling)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scaling:
        time_scaling([int(t) for t in args.scaling.split(",")], args)
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_train_"))
    root.mkdir(parents=True, exist_ok=True)
    store, run_dir = root / "store", root / "run"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    write_store(store, args.videos, args.frames, args.classes, val=args.batch_size)
    print(f"store: {args.videos} train videos x {args.frames} frames, coarse D=1280, "
          f"fine D=2048 ({time.perf_counter() - t0:.1f} s to write)")
    cfg = RunConfig(
        method="liteeval", store=str(store), out=str(run_dir), epochs=args.epochs,
        batch_size=args.batch_size, lr=1e-4, seed=0, eval_split="val", threads=args.threads,
        method_config=liteeval.Config(coarse_hidden=args.coarse_hidden,
                                      fine_hidden=args.fine_hidden, gamma=0.05))
    train(cfg)
    print(f"LiteEval LSTM {args.coarse_hidden}/{args.fine_hidden}, batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print("| epoch | steps | videos/s | data s | compute s | data share |")
    print("|---|---|---|---|---|---|")
    for row in summarise(run_dir / "metrics.jsonl"):
        total = row["data"] + row["compute"]
        print(f"| {row['epoch']} | {row['steps']} | {args.videos / total:.2f} | "
              f"{row['data']:.2f} | {row['compute']:.2f} | {row['data'] / total:.1%} |")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
