"""C2F coarse-exit ensemble (Quader et al., "Towards Efficient Coarse-to-Fine Networks for Action
and Gesture Recognition"), on cached features.

Pathways: one per view, ordered coarse -> fine (`Config.views`). Pathway n scores every frame of
its view with a small head and pools the frame scores over the video -> O_n. The pathways'
concatenated logits are fused by a reparameterized FC layer (eq. 1) -> O_C2F, initialised to
the sum of the pathways' logits (the paper gives no initialisation); `fold()` replaces it by
the plain FC layer with the folded weights w_r, the deployment form (tested to give the same
outputs). Checkpoints keep the reparameterized weights w, so evaluation here computes w_r from
them on the fly: folding inside a run would store w_r under the same parameter names and a
reloaded model would apply eq. 1 twice.

Training (`mode`):
- "joint" (C2F_A): L = sum_n alpha L_n + (1 - alpha) L_C2F (eq. 3), alpha = 0.9.
- "classroom" (C2F_C): the finest pathway F is trained first on its own (stage "teacher"), then
  frozen, and the coarser pathways and the fusion learn from the labels and from F:
  L_d = sum_n alpha KL(p_n/tau, p_F/tau) + sum_n (1 - alpha/2) L_n + (1 - alpha/2) L_C2F (eq. 4),
  alpha = 0.1, tau = 6, the sums over the pathways being trained.
In "joint" mode both stages of SCHEDULE run the same eq. 3 on all parameters.

Coarse-exit (sec. 3.5), cascading as the paper does: run pathway 0; if its calibrated
confidence s^C = 1 - (1 - s)·e_n/e_C2F (eq. 5; s the top softmax score, e_n and e_C2F the
training misclassification rates of pathway n and of the ensemble) exceeds T, answer with O_0;
otherwise run pathway 1 and test it the same way, and so on; when no pathway exits, all N have
run and the answer is O_C2F. A video's cost is the sum of the pathways it ran (each: its view's
backbone on every frame + the head per frame) + the fusion when it reached the end.

The error rates are MEASURED on the training set after training (`measure_training_errors`,
the C2F spec's post-training hook in trainers/methods.py) and stored in the `train_errors`
buffer, hence in the checkpoint; they are Laplace-smoothed, (wrong + 1) / (n + 2), so that an
ensemble with no training error still gives a finite ratio.

Deviation from the paper (pooling, `Config.pool`): the paper's pathways are TSM networks that
average their frame logits over a short trimmed clip. Over an untrimmed, background-dominated
video that average gives every frame the same weight in O_n and in its gradient, so 90% of the
credit goes to background frames, which carry only the video's own look: a head fits that look
and memorises the training videos. Measured on `c2f synthetic --realistic --videos 480 --seed 3`
(24 classes, 10% of frames carry the class): with the mean, 60% of the fine pathway's training
margin came from background frames, and on test videos the background part had std 0.24 around
0 against 0.18 from the class frames; test mAP 0.216 (fine pathway alone 0.168) while its
training probe reached 0.87. The default pools by log-mean-exp, O_n = log mean_t exp(z_t) (LSE: the
frames scoring a class highest carry it, ~75% of the true class's weight on the class frames
after training); same store and loop settings: test mAP 0.851, and 0.950 at lr 3e-2 (the
default, trainers/methods.py C2F_RUN). On a trimmed clip where every frame shows the action,
LSE is close to the mean. `pool="mean"` keeps the paper's form.

`budget_run` (the spec's `c2f eval --budget` evaluation) streams videos through the cascade
with the eq. 6 controller (trainers.budget).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers import normalize
from trainers.budget import BudgetController
from trainers.configs.c2f import Config
from trainers.cost import module_gmacs
from trainers.data import StoreInfo, make_loader
from trainers.evaluation import evaluating
from trainers.losses import video_loss
from trainers.method import Batch, MethodOutput, TrainState

log = logging.getLogger(__name__)

#: staged training for the classroom mode (sec. 3.4): train F, then freeze it and teach
SCHEDULE = [("teacher", 0.4), ("classroom", 0.6)]


class ReparamLinear(nn.Module):
    """FC layer trained through w_r = 0.5 [(2 - beta) w + (beta w)^3] (eq. 1).

    Autograd gives the gradient 0.5 (2 - beta) g + 1.5 beta^3 w^2 g, i.e. eq. 2 (whose printed
    constant 2 beta^3 differs from the derivative of eq. 1; we follow eq. 1).
    """

    def __init__(self, in_features: int, out_features: int, beta: float) -> None:
        super().__init__()
        self.beta = beta
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, std=0.01)
        if in_features % out_features == 0:
            # start from the plain sum of the pathways' logits: an identity block per pathway
            # (w = 1 is a fixed point of eq. 1 at beta = 1)
            with torch.no_grad():
                self.weight += torch.eye(out_features).repeat(1, in_features // out_features)

    def folded_weight(self) -> torch.Tensor:
        b = self.beta
        return 0.5 * ((2.0 - b) * self.weight + (b * self.weight) ** 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.folded_weight(), self.bias)

    def fold(self) -> nn.Linear:
        """The plain FC layer inference uses: same outputs, no reparameterization."""
        out = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            out.weight.copy_(self.folded_weight())
            out.bias.copy_(self.bias)
        return out


class Pathway(nn.Module):
    """Per-frame head on one view, pooled over the valid frames -> video logits O_n.

    pool "lse": O_n = log mean_t exp(z_t), a smooth maximum over frames whose gradient
    weights frame t by softmax_t(z_t), so a class's video score is carried by the frames that
    score it highest; "mean": O_n = mean_t z_t (TSM's consensus); "topk": per class, the mean
    of the ceil(topk * T) highest frame scores.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int, dropout: float,
                 pool: str = "lse", topk: float = 0.1) -> None:
        super().__init__()
        if hidden:
            self.head = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))
        self.pool = pool
        self.topk = topk

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.head(x)
        m = mask.unsqueeze(2)
        n = m.sum(1).clamp_min(1)  # [B, 1] valid frames
        if self.pool == "mean":
            return (z * m).sum(1) / n
        z = z.masked_fill(~m, float("-inf"))
        if self.pool == "lse":
            return torch.logsumexp(z, dim=1) - n.log()
        k = (n * self.topk).ceil().long()  # [B, 1], >= 1 since n >= 1
        top = z.sort(dim=1, descending=True).values
        keep = torch.arange(z.shape[1], device=z.device)[None, :, None] < k[:, :, None]
        return top.masked_fill(~keep, 0.0).sum(1) / k


class C2F(nn.Module):
    """N pathways + reparameterized fusion + cascaded coarse-exit (Fig. 1)."""

    needs_stages = False

    def __init__(self, cfg: Config, info: StoreInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.required_views = tuple(cfg.views)
        c = info.num_classes
        dims = [info.views[v].dim for v in cfg.views]
        self.pathways = nn.ModuleList(Pathway(d, c, cfg.head_hidden, cfg.dropout, cfg.pool, cfg.topk)
                                       for d in dims)
        self.fusion: nn.Module = ReparamLinear(len(dims) * c, c, cfg.beta)
        #: training top-1 error of each pathway and of the ensemble (eq. 5), NaN until measured
        self.register_buffer("train_errors", torch.full((len(dims) + 1,), float("nan")))
        self.view_gmacs = [float(info.views[v].gmacs_per_frame) for v in cfg.views]
        with torch.no_grad():
            self.head_gmacs = [module_gmacs(p.head, torch.zeros(1, d))
                               for p, d in zip(self.pathways, dims)]
            self.fusion_gmacs = module_gmacs(self.fusion, torch.zeros(1, len(dims) * c))
        self.stage = "joint"
        self._warned = False

    # -- training -----------------------------------------------------------------------
    def configure_stage(self, stage: str) -> None:
        """Classroom mode: train only F in "teacher", everything but F in "classroom"."""
        self.stage = stage
        if self.cfg.mode != "classroom":
            return
        teacher_only = stage == "teacher"
        for i, p in enumerate(self.pathways):
            is_teacher = i == len(self.pathways) - 1
            p.requires_grad_(is_teacher if teacher_only else not is_teacher)
        self.fusion.requires_grad_(not teacher_only)

    def fold(self) -> None:
        """Swap the reparameterized fusion for its plain folded FC layer (inference form)."""
        if isinstance(self.fusion, ReparamLinear):
            self.fusion = self.fusion.fold()

    def pathway_logits(self, batch: Batch) -> torch.Tensor:
        """[B, N, C] O_n of every pathway."""
        frozen_teacher = self.cfg.mode == "classroom" and self.stage == "classroom"
        outs = []
        for i, (view, p) in enumerate(zip(self.cfg.views, self.pathways)):
            if frozen_teacher and i == len(self.pathways) - 1:
                p.eval()
                with torch.no_grad():
                    outs.append(p(batch.features[view], batch.mask))
            else:
                outs.append(p(batch.features[view], batch.mask))
        return torch.stack(outs, dim=1)

    # -- coarse-exit ----------------------------------------------------------------------
    def calibrated_confidence(self, pathway_logits: torch.Tensor) -> torch.Tensor:
        """[B, N] s^C_n = 1 - (1 - s_n) e_n / e_C2F (eq. 5), from the measured error rates."""
        if torch.isnan(self.train_errors).any():
            raise RuntimeError(
                "coarse-exit needs the training error rates: run "
                "trainers.c2f.measure_training_errors(model, train_loader) after training"
            )
        s = F.softmax(pathway_logits, dim=2).amax(dim=2)
        ratio = self.train_errors[:-1] / self.train_errors[-1]
        return 1.0 - (1.0 - s) * ratio

    def exit_costs(self, lengths: torch.Tensor) -> torch.Tensor:
        """[B, N] GMACs of a video that exits after pathway n (cumulative over the cascade)."""
        per_pathway = torch.stack(
            [lengths.to(torch.float64) * (g + h) for g, h in zip(self.view_gmacs, self.head_gmacs)],
            dim=1,
        )
        cost = per_pathway.cumsum(dim=1)
        cost[:, -1] += self.fusion_gmacs
        return cost

    def forward(self, batch: Batch, state: TrainState) -> MethodOutput:
        paths = self.pathway_logits(batch)
        fused = self.fusion(paths.flatten(1))  # the reparameterized FC on I_C2F
        bsz, n = paths.shape[0], paths.shape[1]
        threshold = self.cfg.exit_threshold
        if threshold is not None and torch.isnan(self.train_errors).any():
            if not self._warned:
                log.warning("C2F: coarse-exit (T=%s) needs the training error rates; running the "
                            "full ensemble until measure_training_errors() is called", threshold)
                self._warned = True
            threshold = None
        if threshold is None or (state.training and self.training):
            exit_at = torch.full((bsz,), n - 1, dtype=torch.int64, device=paths.device)
        else:
            exit_at = cascade_exit(self.calibrated_confidence(paths).detach(), threshold)
        options = torch.cat([paths[:, :-1], fused.unsqueeze(1)], dim=1)  # answer at each exit
        rows = torch.arange(bsz, device=paths.device)
        scores = F.log_softmax(options, dim=2)[rows, exit_at]
        costs = self.exit_costs(batch.lengths)
        gflops = costs[rows, exit_at]
        frames_used = {
            v: torch.where(exit_at >= i, batch.lengths, 0) for i, v in enumerate(self.cfg.views)
        }
        decisions = torch.where(batch.mask, exit_at.unsqueeze(1), -1)
        names = {i: f"exit after {v}" for i, v in enumerate(self.cfg.views[:-1])}
        names[n - 1] = "full ensemble"
        return MethodOutput(
            logits=scores if not (state.training and self.training) else fused,
            gflops=gflops,
            frames_used=frames_used,
            decisions=decisions,
            decision_names=names,
            extras={"pathway_logits": paths, "fused_logits": fused, "exit_costs": costs},
        )

    def loss(
        self, out: MethodOutput, batch: Batch, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, float]]:
        paths, fused = out.extras["pathway_logits"], out.extras["fused_logits"]
        y, kind = batch.targets, self.cfg.loss
        per_path = [video_loss(paths[:, i], y, kind).mean() for i in range(paths.shape[1])]
        l_c2f = video_loss(fused, y, kind).mean()
        parts = {f"L_{v}": lo.item() for v, lo in zip(self.cfg.views, per_path)}
        parts["L_C2F"] = l_c2f.item()
        if self.cfg.mode == "classroom" and self.stage == "teacher":
            return per_path[-1], parts
        if self.cfg.mode == "classroom":
            a, tau = self.cfg.distill_alpha, self.cfg.tau
            teacher = F.softmax(paths[:, -1].detach() / tau, dim=1)
            kld = sum(
                F.kl_div(F.log_softmax(paths[:, i] / tau, dim=1), teacher, reduction="batchmean")
                for i in range(paths.shape[1] - 1)
            )
            total = a * kld + (1 - a / 2) * (sum(per_path[:-1]) + l_c2f)  # eq. 4
            parts["KLD"] = kld.item()
            return total, parts
        a = self.cfg.alpha
        return a * sum(per_path) + (1 - a) * l_c2f, parts  # eq. 3


def cascade_exit(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B] index of the pathway each video exits at: the first n < N-1 with s^C_n > T, else
    N-1 (all pathways ran, answer from the ensemble)."""
    n = confidence.shape[1]
    passes = confidence[:, :-1] > threshold
    first = torch.where(passes.any(dim=1), passes.float().argmax(dim=1), n - 1)
    return first.long()


def _top1_wrong(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    top = logits.argmax(dim=1)
    return targets[torch.arange(len(top), device=top.device), top] <= 0


def measure_training_errors(model: C2F, loader) -> torch.Tensor:
    """Measure e_n and e_C2F on `loader` (the training split) in eval mode and store them.

    The C2F spec's post-training hook (trainers/methods.py): the loop calls it on the best
    weights before the test evaluation. Returns the smoothed rates [N+1] (pathways coarse ->
    fine, then the ensemble).
    """
    wrong = torch.zeros(len(model.pathways) + 1, dtype=torch.float64)
    total = 0
    with evaluating(model, loader) as batches:
        for batch in batches:
            paths = model.pathway_logits(normalize.apply(model, batch))
            fused = model.fusion(paths.flatten(1))
            for i in range(paths.shape[1]):
                wrong[i] += _top1_wrong(paths[:, i], batch.targets).sum().cpu()
            wrong[-1] += _top1_wrong(fused, batch.targets).sum().cpu()
            total += len(batch.video_ids)
    rates = (wrong + 1.0) / (total + 2.0)
    model.train_errors.copy_(rates.to(model.train_errors.dtype))
    log.info("C2F training error rates (pathways..., ensemble): %s on %d videos",
             [round(float(r), 4) for r in rates], total)
    return rates


def ensure_training_errors(model: C2F, loader) -> None:
    """Measure e_n, e_C2F on the training split of `loader`'s store when the checkpoint lacks
    them (a run trained without the spec's post-training hook)."""
    if not torch.isnan(model.train_errors).any():
        return
    train = make_loader(loader.store, loader.views, "train", loader.batch_size, False)
    log.info("C2F: measuring the training error rates on the %d training videos",
             len(train.video_ids))
    measure_training_errors(model, train)


def _collect(model: C2F, loader, needed: int) -> dict[str, np.ndarray]:
    """Per-video confidence, exit costs and correctness at every exit, cycling `loader`."""
    conf, costs, correct, ids = [], [], [], []
    seen = 0
    with evaluating(model, loader) as batches:
        while seen < needed:
            before = seen
            for batch in batches:
                paths = model.pathway_logits(normalize.apply(model, batch))
                fused = model.fusion(paths.flatten(1))
                conf.append(model.calibrated_confidence(paths))
                costs.append(model.exit_costs(batch.lengths))
                options = torch.cat([paths[:, :-1], fused.unsqueeze(1)], dim=1)
                right = [~_top1_wrong(options[:, i], batch.targets)
                         for i in range(options.shape[1])]
                correct.append(torch.stack(right, dim=1))
                ids.extend(batch.video_ids)
                seen += len(batch.video_ids)
                if seen >= needed:
                    break
            if seen == before:
                raise ValueError("budget_run: the loader yielded no videos")
    return {
        "confidence": torch.cat(conf).cpu().numpy()[:needed],
        "costs": torch.cat(costs).cpu().numpy()[:needed],
        "correct": torch.cat(correct).cpu().numpy()[:needed],
        "ids": np.asarray(ids[:needed]),
    }


def budget_run(
    model: C2F,
    loader,
    budgets: list[float],
    window: int = 100,
    t_init: float | None = None,
    rule: str = "secant",
) -> dict:
    """Stream len(budgets) videos (cycling `loader`) through the cascade while the eq. 6
    controller steers T so that the running mean cost follows budgets[i] (GMACs per video,
    may change at any video).

    Returns per-video lists (video_id, budget, threshold, exit, cost, running_mean_cost over the
    last `window` videos, correct) and summaries (mean cost, top-1).
    """
    if not budgets:
        raise ValueError("budget_run needs at least one budget")
    if torch.isnan(model.train_errors).any():
        ensure_training_errors(model, loader)
    data = _collect(model, loader, len(budgets))
    errors = model.train_errors
    t_low = float(1.0 - errors[0] / errors[-1])  # the paper's T range [1 - e_N/e_1, 1]
    ctl = BudgetController(t_low=min(t_low, 0.999 - 1e-3), window=window, t_init=t_init,
                           rule=rule)
    rows: dict[str, list] = {k: [] for k in (
        "video_id", "budget", "threshold", "exit", "cost", "running_mean_cost", "correct")}
    for i, budget in enumerate(budgets):
        t = ctl.threshold
        exit_at = int(cascade_exit(torch.from_numpy(data["confidence"][i : i + 1]), t)[0])
        cost = float(data["costs"][i, exit_at])
        ctl.update(budgets[i + 1] if i + 1 < len(budgets) else budget, cost,
                   float(data["costs"][i, -1]))
        rows["video_id"].append(str(data["ids"][i]))
        rows["budget"].append(float(budget))
        rows["threshold"].append(float(t))
        rows["exit"].append(exit_at)
        rows["cost"].append(cost)
        rows["running_mean_cost"].append(ctl.running_cost())
        rows["correct"].append(bool(data["correct"][i, exit_at]))
    rows["mean_cost"] = float(np.mean(rows["cost"]))
    rows["full_cost_mean"] = float(np.mean(data["costs"][:, -1]))
    rows["coarse_cost_mean"] = float(np.mean(data["costs"][:, 0]))
    rows["top1"] = float(np.mean(rows["correct"]))
    rows["train_errors"] = [float(e) for e in errors]
    return rows


def build(cfg: Config, info: StoreInfo) -> C2F:
    """Validate `cfg` against the store and build the model."""
    cfg.validate(info)
    return C2F(cfg, info)
