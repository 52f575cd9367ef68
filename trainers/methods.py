"""Every method the trainers know, each described once by a `MethodSpec`.

The training loop, `c2f train | eval | sweep` and docs/trainers.md read these specs instead of
probing method modules for optional members. A spec names its parts as 'module:attribute'
references that are imported only when used, so listing methods and their config keys (e.g.
`c2f train METHOD --help`) does not import torch. Several names may share one module and
differ only in Config defaults (`presets`), e.g. `lstm-cf` is the LSTM baseline fed
coarse+fine features. Adding a method = a module with a Config dataclass and a builder
(trainers/method.py), plus one entry in METHODS.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainers import rundir


def load_ref(ref: str) -> Any:
    """The attribute a 'package.module:attribute' reference names (imports the module)."""
    module, sep, attribute = ref.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"bad reference {ref!r}: expected 'package.module:attribute'")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Evaluation:
    """An evaluation beyond the loop's offline one, run by `c2f eval RUN --FLAG VALUES...`.

    function: reference to `f(model, loader, values) -> JSON-able result`; it raises
        ValueError naming what a run lacks for it (e.g. a head that was not trained).
    output: the file of the run directory it writes (trainers.rundir), which reports draw.
    flag: the `c2f eval` option that asks for it; help: one line for that option.
    """

    name: str
    function: str
    output: str
    flag: str
    help: str


#: LiteEval Fig. 2: predict after the K-th fine feature, against Uniform-K and Seq-K
ONLINE = Evaluation("online", "trainers.online:online_curve", rundir.ONLINE, "--online-budget",
                    "online evaluation with these fine-feature budgets K (LiteEval Fig. 2)")
#: C2F Fig. 2a: stream videos through the coarse-exit cascade under per-video budgets (eq. 6)
BUDGET = Evaluation("budget", "trainers.c2f:budget_run", rundir.BUDGET, "--budget",
                    "per-video GFLOPs budgets B for the C2F budget controller (eq. 6)")
EVALUATIONS: dict[str, Evaluation] = {e.name: e for e in (ONLINE, BUDGET)}


@dataclass(frozen=True)
class MethodSpec:
    """What the loop, the CLI and the docs need to know about one method.

    name: the CLI name. summary: one line for listings.
    config: reference to the method's Config dataclass (fields = the method's config keys,
        each documented in its docstring; `validate(info)` refuses bad values).
    builder: reference to `build(cfg, info) -> nn.Module` implementing trainers.method.Method.
    schedule: reference to a list of (stage, fraction of the epochs) pairs; the model then has
        `configure_stage(stage)`, which the loop calls whenever the stage changes. None: one
        stage, "joint", for every epoch.
    after_training: reference to `f(model, train_loader)` called on the best weights before
        the test evaluation (best.pt is re-saved with whatever buffers it filled).
    evaluations: extra evaluations `c2f eval` offers for this method.
    presets: Config defaults that make this name out of a shared module.
    run_defaults: loop settings (trainers.config.RunConfig keys: lr, optimizer, schedule, ...)
        this method trains with unless a file, a flag or --set says otherwise.
    """

    name: str
    summary: str
    config: str
    builder: str
    schedule: str | None = None
    after_training: str | None = None
    evaluations: tuple[Evaluation, ...] = ()
    presets: Mapping[str, Any] = field(default_factory=dict)
    run_defaults: Mapping[str, Any] = field(default_factory=dict)

    def config_type(self) -> type:
        """The method's Config dataclass."""
        return load_ref(self.config)

    def default_config(self) -> Any:
        """A Config with this name's presets applied."""
        return self.config_type()(**self.presets)

    def build(self, cfg: Any, info: Any) -> Any:
        """The model for `cfg` on a store described by `info` (trainers.data.StoreInfo)."""
        return load_ref(self.builder)(cfg, info)

    def stages(self) -> list[tuple[str, float]]:
        """(stage, fraction of the epochs) pairs; empty for a single-stage method."""
        return list(load_ref(self.schedule)) if self.schedule else []

    def evaluation(self, name: str) -> Evaluation | None:
        """The extra evaluation called `name`, or None when this method has none."""
        return next((e for e in self.evaluations if e.name == name), None)


# Loop settings per method (issue 8: defaults that learn on data nobody tuned them on). Each
# was measured on a realistic generated store (384 training videos, 24 classes, 10% of frames
# carry the class, no val split, 10 epochs, warm-up + cosine); docs/trainers.md has the table.
#: LiteEval: Adam (sec. 4.1), gradient norm clipped at 5 and weight decay 1e-4 (the official
#: code). The paper's fixed lr 1e-4 at batch 256 is tuned for 45k-video FCVID and hundreds of
#: epochs; measured test mAP 0.30 at lr 1e-3, 0.51 at 3e-3, 0.87 at 1e-2 (mean readout); with
#: the default readout="fine" on tests/test_defaults_measured.py's store: 0.45 at 3e-3, 0.96 at
#: 1e-2, 0.94 at 3e-2.
LITEEVAL_RUN = {"optimizer": "adam", "grad_clip": 5.0, "weight_decay": 1e-4, "lr": 1e-2}
#: AR-Net: lr 3e-2 (sec. 4.1 warms the heads up at 0.02). At 1e-3 the per-view heads are still
#: weak after the warm-up stage, the GFLOPs loss wins and the policy collapses onto the cheap
#: view (test mAP 0.084, fine usage 0.000). On tests/test_defaults_measured.py's store (views
#: fine + coarse, 10 epochs): test mAP 0.63 at 1e-2, 0.90 at 3e-2, 0.88 at 1e-1; random policy
#: 0.30.
ARNET_RUN = {"lr": 3e-2}
#: C2F: weight decay 5e-4 (sec. 4) and a high initial rate (sec. 4: 0.02 with SGD; here Adam
#: 3e-2); the shared warm-up + cosine decays over both stages (teacher, classroom). With the
#: LSE-pooled pathways (trainers/c2f.py) test mAP 0.851 at lr 1e-2, 0.950 at 3e-2, 0.499 at 1e-1
#: (Adam diverges); weight decay 0 / 5e-3 at 3e-2: 0.936 / 0.905.
C2F_RUN = {"weight_decay": 5e-4, "lr": 3e-2}
#: SoF-Net: weight decay 1e-5 and the rate x0.1 after 30 of 75 epochs (sec. 4.2), as a fraction;
#: Adam at 3e-2 instead of SGD at 1e-3 (a pre-trained backbone fine-tuned for ~31k steps there,
#: heads from scratch in ~40-60 steps here). At the shared 1e-3 the policy never left
#: all-forward (mAP 0.31 on tests/test_sofnet.py's store) and early termination (eq. 3.7,
#: rho 0.999) never fired. tests/test_measured_sofnet.py: test mAP 50.1 at 9e-3, 96.7 at 3e-2,
#: 96.6 at 9e-2 (docs/trainers.md, "SoF-Net defaults and why").
SOFNET_RUN = {"lr": 3e-2, "weight_decay": 1e-5, "schedule": "multistep", "milestones": [0.4]}
#: Uniform scores a video by the mean of its frames' softmax, so on background-dominated videos
#: only the few class frames move the classifier: at 1e-3 it was near chance after 10 epochs
#: (issue 8: 0.21 test mAP; 1e-2: 0.956).
UNIFORM_RUN = {"lr": 1e-2}

_LITEEVAL = ("trainers.configs.liteeval:Config", "trainers.liteeval:build")
_BASELINE = ("trainers.configs.baselines:Config", "trainers.baselines:build")

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("liteeval", "LiteEval: coarse RNN + Gumbel-gated fine RNN (Wu et al.)",
               *_LITEEVAL, evaluations=(ONLINE,), run_defaults=LITEEVAL_RUN),
    MethodSpec("liteeval-rl", "LiteEval-RL: LiteEval's gate trained by policy gradient",
               *_LITEEVAL, evaluations=(ONLINE,), presets={"gate": "reinforce"},
               run_defaults=LITEEVAL_RUN),
    MethodSpec("arnet", "AR-Net: per-frame resolution or skip chosen by an LSTM policy",
               "trainers.configs.arnet:Config", "trainers.arnet:build",
               schedule="trainers.arnet:SCHEDULE", run_defaults=ARNET_RUN),
    MethodSpec("random-policy", "AR-Net's classifiers with actions drawn at random",
               "trainers.configs.arnet:Config", "trainers.arnet:build",
               schedule="trainers.arnet:SCHEDULE", presets={"policy": "random"},
               run_defaults=ARNET_RUN),
    MethodSpec("sofnet", "SoF-Net: per-frame layer skipping with early termination (Seon)",
               "trainers.configs.sofnet:Config", "trainers.sofnet:build",
               schedule="trainers.sofnet:SCHEDULE", run_defaults=SOFNET_RUN),
    MethodSpec("c2f", "C2F: coarse-exit ensemble of pathways (Quader et al.)",
               "trainers.configs.c2f:Config", "trainers.c2f:build",
               schedule="trainers.c2f:SCHEDULE",
               after_training="trainers.c2f:measure_training_errors", evaluations=(BUDGET,),
               run_defaults=C2F_RUN),
    MethodSpec("uniform", "Uniform: per-frame linear classifier, mean of the softmax",
               *_BASELINE, presets={"kind": "uniform"}, run_defaults=UNIFORM_RUN),
    MethodSpec("lstm", "LSTM over every frame, prediction from the last state",
               *_BASELINE, presets={"kind": "lstm"}),
    MethodSpec("uniform-cf", "Uniform on coarse+fine features concatenated",
               *_BASELINE, presets={"kind": "uniform", "concat_view": "coarse"},
               run_defaults=UNIFORM_RUN),
    MethodSpec("lstm-cf", "LSTM on coarse+fine features concatenated",
               *_BASELINE, presets={"kind": "lstm", "concat_view": "coarse"}),
)}


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name` (ValueError naming it when unknown)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
