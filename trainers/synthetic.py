"""A generated feature store whose structure makes the papers' claims testable in seconds.

Why: real FCVID/ActivityNet features take days to extract; the trainers' behaviour (does the
gate learn to read fine features only where they matter? does a coarse exit save compute on
easy videos?) can be checked on data whose answer is known by construction.

Structure (deterministic for a given seed):

- `classes` classes (even, default 8) named class00, class01, ...; classes come in pairs
  (2g, 2g+1) forming group g. Videos are spread evenly over classes; splits are assigned per
  class: 20% val and 20% test (at least one each when the class has 3+ videos), rest train.
- A video has T frames (uniform in `frames`, 1 fps timestamps). One contiguous segment of
  about `informative` * T frames (at least 2) carries the class; the other frames are
  background (one of 4 background clusters each, no class evidence). Each informative frame
  has a strength s ~ U(0.5, 1.5): strong frames are "easy".
- With probability `second_label`, a video gets a second segment of a class from another group
  and both labels (multi-label); default 0 (single-label).
- Every view x_v[t] = a_cls * s * P_v[class] + a_grp * s * G_v[group] + a_inf * I_v
  (informative frames) or a_bg * B_v[cluster] (background frames), + N(0, 1) noise per dim,
  with random unit prototypes drawn per view. Amplitudes per view:

  | view    | backbone@size      | dim | a_cls | a_grp | a_inf | a_bg | role                      |
  |---------|--------------------|-----|-------|-------|-------|------|---------------------------|
  | coarse  | mobilenet_v2@112   | 32  | 0.0   | 2.5   | 2.5   | 1.5  | LiteEval/C2F coarse       |
  | fine    | resnet101@224      | 64  | 3.0   | 1.0   | 1.0   | 1.5  | LiteEval/C2F fine         |
  | r50_224 | resnet50@224       | 64  | 3.0   | 1.0   | 1.0   | 1.5  | AR-Net ladder, best       |
  | r34_168 | resnet34@168       | 48  | 2.0   | 1.0   | 1.0   | 1.5  | AR-Net ladder             |
  | r18_112 | resnet18@112       | 48  | 1.2   | 1.5   | 1.5   | 1.5  | AR-Net ladder             |
  | mbv2_84 | mobilenet_v2@84    | 32  | 0.4   | 2.0   | 2.0   | 1.5  | AR-Net policy input       |

  So coarse features tell informative from background and the class pair, never the class
  inside a pair; fine features tell the class on informative frames only.
- Real-data options (all off by default, so the store above is unchanged):
  `video_style` adds, to every frame of a video, a constant random direction per view of that
  amplitude (the scene/camera look a real video has whatever its class: a model with enough
  capacity can recognise the training videos by it without learning the class evidence);
  `scale` multiplies every stored feature (real backbones' features are not N(0, 1): tests run
  at 0.1x, 1x and 10x); `with_val=False` keeps only train and test splits (the val share goes
  to train), as many real stores have; `segments=k` splits the class evidence into k short
  segments, one in each k-th of the video (an action that recurs, as ActivityNet's 1.5
  instances per video do: a video whose first segment is clear is decided early, one whose
  evidence is weak needs its last segment; SoF-Net's early termination, eq. 3.7, is worth
  something only then); `easy_background=p` makes a share p of the background frames easy:
  their background direction is 3x as strong in every view and stage, so res1 already tells
  them apart (black, title or static frames a real backbone's first stage recognises), while
  the rest stay as hard as the class frames' own background at every stage. `REALISTIC` holds the settings of a store that looks
  like a real untrimmed dataset (background-dominated videos with short class segments).
- The fine view has per-stage pooled features res1..res5 (SoF-Net), dims 16, 24, 32, 48, 64,
  class amplitude 0.3, 0.8, 1.5, 2.2 and res5 == the fine features; informative/background
  amplitudes are the same at every stage, so background frames can be stopped early.

Feature dims are far below the real backbones' (1280, 2048, ...) to keep tests fast; the costs
the trainers account are still those measured for the named backbones at the named sizes.
The ground truth (which frames are informative) and the generator's parameters are written
last, to STORE/synthetic_truth.json, and read back with `load_truth`; a re-run with the same
parameters finds it and does nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from featstore import StoreWriter, ViewSpec, build_catalog
from featstore.atomic import write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticView:
    """Backbone whose cost is accounted for the view, feature dim, and signal amplitudes."""

    backbone: str
    input_size: int
    dim: int
    a_cls: float
    a_grp: float
    a_inf: float
    a_bg: float


VIEWS: dict[str, SyntheticView] = {
    "coarse": SyntheticView("mobilenet_v2", 112, 32, 0.0, 2.5, 2.5, 1.5),
    "fine": SyntheticView("resnet101", 224, 64, 3.0, 1.0, 1.0, 1.5),
    "r50_224": SyntheticView("resnet50", 224, 64, 3.0, 1.0, 1.0, 1.5),
    "r34_168": SyntheticView("resnet34", 168, 48, 2.0, 1.0, 1.0, 1.5),
    "r18_112": SyntheticView("resnet18", 112, 48, 1.2, 1.5, 1.5, 1.5),
    "mbv2_84": SyntheticView("mobilenet_v2", 84, 32, 0.4, 2.0, 2.0, 1.5),
}
#: AR-Net's resolution ladder, finest first (AR-Net's order of "resolutions").
LADDER = ("r50_224", "r34_168", "r18_112")
#: the view AR-Net's policy LSTM reads (the lowest resolution)
POLICY_VIEW = "mbv2_84"
#: per-stage features of the fine view: stage -> (dim, class amplitude); res5 is the fine view
FINE_STAGES: dict[str, tuple[int, float]] = {
    "res1": (16, 0.3),
    "res2": (24, 0.8),
    "res3": (32, 1.5),
    "res4": (48, 2.2),
    "res5": (64, 3.0),
}
BACKGROUND_CLUSTERS = 4
#: a store that looks like a real untrimmed dataset: 24 classes (12 coarse groups), 40-80 s
#: videos of which about 10% carry the class, a per-video look, no val split
REALISTIC: dict[str, object] = {"classes": 24, "frames": (40, 80), "informative": 0.1,
                                "video_style": 1.5, "with_val": False}
TRUTH_FILE = "synthetic_truth.json"
#: background amplitude multiplier of the frames `easy_background` marks easy
EASY_GAIN = 3.0


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _Prototypes:
    """Random unit directions of one feature space (one view or stage)."""

    def __init__(self, rng: np.random.Generator, dim: int, classes: int) -> None:
        self.cls = _unit(rng, classes, dim)
        self.grp = _unit(rng, classes // 2, dim)
        self.inf = _unit(rng, 1, dim)[0]
        self.bg = _unit(rng, BACKGROUND_CLUSTERS, dim)

    def render(
        self,
        rng: np.random.Generator,
        frame_class: np.ndarray,
        strength: np.ndarray,
        cluster: np.ndarray,
        amps: tuple[float, float, float, float],
        bg_gain: np.ndarray | None = None,
    ) -> np.ndarray:
        """Features [T, dim]: frame_class is -1 on background frames; bg_gain [T] scales the
        background amplitude per frame (None: 1)."""
        a_cls, a_grp, a_inf, a_bg = amps
        informative = frame_class >= 0
        c = np.where(informative, frame_class, 0)
        s = (strength * informative)[:, None]
        x = a_cls * s * self.cls[c] + a_grp * s * self.grp[c // 2]
        x += a_inf * informative[:, None] * self.inf[None, :]
        bg = a_bg * (~informative)[:, None] * self.bg[cluster]
        x += bg if bg_gain is None else bg_gain[:, None] * bg
        return x + rng.standard_normal(x.shape)


def _segment(rng: np.random.Generator, t: int, fraction: float) -> tuple[int, int]:
    length = min(t, max(2, round(fraction * t)))
    start = int(rng.integers(0, t - length + 1))
    return start, start + length


def _segments(rng: np.random.Generator, t: int, fraction: float, k: int) -> list[tuple[int, int]]:
    """`k` segments sharing `fraction` of the frames, one at a random place in each of k equal
    windows of the video (so the class recurs from the start to the end, never overlapping)."""
    if k == 1:
        return [_segment(rng, t, fraction)]
    edges = np.linspace(0, t, k + 1).round().astype(int)
    spans = []
    for lo, hi in pairwise(edges):
        a, b = _segment(rng, int(hi - lo), fraction * t / max(1, hi - lo) / k)
        spans.append((int(lo) + a, int(lo) + b))
    return spans


def make_synthetic_store(
    store_dir: str | os.PathLike,
    *,
    videos: int = 96,
    classes: int = 8,
    frames: tuple[int, int] = (16, 32),
    informative: float = 0.3,
    second_label: float = 0.0,
    seed: int = 0,
    scale: float = 1.0,
    video_style: float = 0.0,
    with_val: bool = True,
    segments: int = 1,
    easy_background: float = 0.0,
) -> Path:
    """Write the store described in the module docstring to `store_dir` and return its path."""
    if classes < 2 or classes % 2:
        raise ValueError(f"classes must be an even number >= 2, got {classes}")
    if videos < classes:
        raise ValueError(f"videos ({videos}) must be >= classes ({classes})")
    if not 2 <= frames[0] <= frames[1]:
        raise ValueError(f"frames must be (lo, hi) with 2 <= lo <= hi, got {frames}")
    if not 0.0 < informative <= 1.0:
        raise ValueError(f"informative must be in (0, 1], got {informative}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if video_style < 0:
        raise ValueError(f"video_style must be >= 0, got {video_style}")
    if not 0.0 <= easy_background <= 1.0:
        raise ValueError(f"easy_background must be in [0, 1], got {easy_background}")
    if not 1 <= segments <= frames[0] // 2:
        raise ValueError(f"segments must be in [1, frames[0] // 2 = {frames[0] // 2}], got "
                         f"{segments}")
    store_dir = Path(store_dir)
    params = {"videos": videos, "classes": classes, "frames": list(frames),
              "informative": informative, "second_label": second_label, "seed": seed}
    if (scale, video_style, with_val) != (1.0, 0.0, True):  # old stores keep their params
        params |= {"scale": scale, "video_style": video_style, "with_val": with_val}
    if segments != 1:
        params["segments"] = segments
    if easy_background:
        params["easy_background"] = easy_background
    if (store_dir / TRUTH_FILE).exists():
        old = json.loads((store_dir / TRUTH_FILE).read_text())["params"]
        if old != params:
            raise ValueError(f"{store_dir} holds a synthetic store made with {old}, not {params}")
        log.info("synthetic store %s already complete: nothing to do", store_dir)
        return store_dir
    rng = np.random.default_rng(seed)
    style_rng = np.random.default_rng([seed, 1])  # its own stream: defaults stay unchanged
    easy_rng = np.random.default_rng([seed, 2])
    protos = {v: _Prototypes(rng, spec.dim, classes) for v, spec in VIEWS.items()}
    stage_protos = {s: _Prototypes(rng, d, classes) for s, (d, _) in FINE_STAGES.items()
                    if s != "res5"}
    names = [f"class{c:02d}" for c in range(classes)]
    writer = StoreWriter(
        store_dir,
        part="synthetic-000",
        views={
            v: ViewSpec(dim=s.dim, backbone=s.backbone, input_size=s.input_size,
                        attrs={"synthetic": True, "amplitudes": [s.a_cls, s.a_grp, s.a_inf,
                                                                 s.a_bg]})
            for v, s in VIEWS.items()
        },
        stage_dims={"fine": {s: d for s, (d, _) in FINE_STAGES.items()}},
        attrs={"generator": "trainers.synthetic", "seed": seed, "informative": informative,
               "second_label": second_label, "fps": 1.0, "scale": scale,
               "video_style": video_style} | ({"segments": segments} if segments != 1 else {})
              | ({"easy_background": easy_background} if easy_background else {}),
    )
    truth: dict[str, list[int]] = {}
    per_class_seen = [0] * classes
    per_class_total = [videos // classes + (1 if c < videos % classes else 0)
                       for c in range(classes)]
    try:
        for i in range(videos):
            label = i % classes
            k, n = per_class_seen[label], per_class_total[label]
            per_class_seen[label] += 1
            n_test = max(1, round(0.2 * n)) if n >= 2 else 0
            n_val = max(1, round(0.2 * n)) if n >= 3 and with_val else 0
            n_train = n - n_val - n_test
            split = "train" if k < n_train else ("val" if k < n_train + n_val else "test")
            t = int(rng.integers(frames[0], frames[1] + 1))
            frame_class = np.full(t, -1)
            for a, b in _segments(rng, t, informative, segments):
                frame_class[a:b] = label
            labels = [label]
            free = np.flatnonzero(frame_class < 0)
            if classes > 2 and len(free) and rng.random() < second_label:
                other = (label + 2 * int(rng.integers(1, classes // 2))) % classes
                a2 = int(free[rng.integers(0, len(free))])
                span = np.arange(a2, min(t, a2 + max(2, round(informative * t / 2))))
                span = span[frame_class[span] < 0]
                frame_class[span] = other
                labels.append(other)
            strength = rng.uniform(0.5, 1.5, size=t)
            cluster = rng.integers(0, BACKGROUND_CLUSTERS, size=t)
            gain = None
            if easy_background > 0:  # easy background: 3x the background amplitude everywhere
                gain = np.where(easy_rng.random(t) < easy_background, EASY_GAIN, 1.0)
            feats = {}
            for v, spec in VIEWS.items():
                amps = (spec.a_cls, spec.a_grp, spec.a_inf, spec.a_bg)
                feats[v] = protos[v].render(rng, frame_class, strength, cluster, amps, gain)
            if video_style > 0:
                for v, spec in VIEWS.items():
                    feats[v] += video_style * _unit(style_rng, 1, spec.dim)
            fine_spec = VIEWS["fine"]
            stages = {}
            for s, (_, a_cls) in FINE_STAGES.items():
                if s == "res5":
                    stages[s] = feats["fine"]
                else:
                    amps = (a_cls, fine_spec.a_grp, fine_spec.a_inf, fine_spec.a_bg)
                    stages[s] = stage_protos[s].render(rng, frame_class, strength, cluster, amps,
                                                       gain)
                    if video_style > 0:
                        stages[s] += video_style * _unit(style_rng, 1, stages[s].shape[1])
            video_id = f"syn{i:05d}"
            writer.add_video(
                video_id,
                labels=[names[c] for c in labels],
                split=split,
                timestamps=np.arange(t, dtype=np.float64),
                features={v: (scale * x).astype(np.float16) for v, x in feats.items()},
                stages={"fine": {s: (scale * x).astype(np.float16) for s, x in stages.items()}},
            )
            truth[video_id] = (frame_class >= 0).astype(int).tolist()
    except BaseException:
        writer.abort()
        raise
    writer.close()
    build_catalog(store_dir)
    write_text(store_dir / TRUTH_FILE, json.dumps({"params": params, "videos": truth}))
    log.info("synthetic store: %d videos, %d classes at %s", videos, classes, store_dir)
    return store_dir


def load_truth(store_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """video id -> bool [T], True on frames that carry class evidence."""
    data = json.loads((Path(store_dir) / TRUTH_FILE).read_text())["videos"]
    return {k: np.asarray(v, dtype=bool) for k, v in data.items()}
