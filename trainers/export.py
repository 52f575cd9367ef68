"""Fine-tuned backbones back into the feature store's world.

`export_backbones` writes each view's backbone as a plain torchvision-layout state dict,
`RUN/export/VIEW.pth`, which `c2f extract --weights VIEW=RUN/export/VIEW.pth` loads unchanged
(strictly, backbones/weights.py), and a sidecar `RUN/export/VIEW.json` with the file's sha256
and the run it came from. Extraction records both in the store's view attributes
(`weights_sha256`, `weights_run`; backbones.weights.weights_provenance), so cached trainers
can be re-run on fine-tuned features and a store says which run made them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from backbones.weights import file_sha256, provenance_path
from featstore.atomic import atomic_path, write_text
from pipeline.extract import RANDOM_INIT
from trainers.encoder import ClipEncoder
from trainers.rundir import RunDir


def export_backbones(encoder: ClipEncoder, run: str | Path) -> dict[str, Path]:
    """Write RUN/export/VIEW.pth (+ VIEW.json) for every view; returns {view: path}."""
    files = RunDir(Path(run).resolve())
    config = files.config
    paths = {}
    for name, backbone in encoder.backbones.items():
        view = encoder.views[name]
        path = files.export(name)
        state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        meta = {
            "view": name,
            "backbone": view.backbone,
            "input_size": view.input_size,
            "sha256": file_sha256(path),
            "run": str(files.root),
            "run_config_sha256": file_sha256(config) if config.exists() else None,
            "initial_weights": view.weights or RANDOM_INIT,
            "frozen": name in encoder.fixed,  # never trained in this run (`--freeze`)
        }
        write_text(provenance_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        paths[name] = path
    return paths
