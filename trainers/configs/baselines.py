"""Config of the non-adaptive baselines (trainers/baselines.py).

Torch-free, so that `c2f train METHOD --help` can list its keys without importing the
model; each key is documented once, in the docstring (trainers/config_help.py reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from trainers.data import StoreInfo


@dataclass
class Config:
    """Baseline hyperparameters (the method name's preset picks kind and concat_view).

    kind: 'uniform' (per-frame linear classifier) or 'lstm'.
    view: the store view whose features are classified.
    concat_view: a second view concatenated per frame (the +CF variants), or None.
    frames: look at this many uniformly spaced frames per video (None = all).
    hidden: LSTM hidden units (kind='lstm').
    readout: 'last' (state at the last valid frame, as LiteEval) or 'mean' (kind='lstm').
    dropout: dropout before the classifier.
    """

    kind: Literal["uniform", "lstm"] = "uniform"
    view: str = "fine"
    concat_view: str | None = None
    frames: int | None = None
    hidden: int = 128
    readout: Literal["last", "mean"] = "last"
    dropout: float = 0.0

    def validate(self, info: StoreInfo) -> None:
        """Refuse views the store lacks and sizes that cannot work, naming the value."""
        for key in ("view", "concat_view"):
            value = getattr(self, key)
            if value is not None and value not in info.views:
                raise ValueError(f"{key}={value!r} is not a view of the store "
                                 f"(has {sorted(info.views)})")
        if self.concat_view == self.view:
            raise ValueError(f"concat_view={self.concat_view!r} repeats view")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames={self.frames} must be >= 1 or None")
        if self.hidden < 1:
            raise ValueError(f"hidden={self.hidden} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
