"""`c2f flops`: print measured multiply-adds and parameters of backbones.

The table is measured from the models (backbones.flops), never typed in; the published
figures appear beside ours only as a reference column.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # backbones.flops imports torch: only the handler loads it
    from backbones.flops import ViewCost

MARKDOWN_INTRO = """\
## Backbone FLOPs

Measured by `c2f flops --markdown` from the models in `backbones/` with
`torch.utils.flop_counter.FlopCounterMode` on the meta device. GMACs are giga
multiply-adds (FlopCounterMode's FLOPs / 2), the unit the papers call "GFLOPs"; only
convolutions and matrix products count. Costs are per frame, or per clip for `mfnet3d`
(FxSIZE). Parameters include the classifier (1000 classes; 400 for `mfnet3d`, as
published). Stage columns are cumulative GMACs up to and including each stage; the last
one is the total minus the classifier. "Published" is the figure the paper prints, with
our measurement's relative difference from it.
"""


def _published(cost: ViewCost) -> str:
    from backbones.flops import PUBLISHED

    ref = PUBLISHED.get((cost.backbone, cost.input_size, cost.frames))
    if ref is None:
        return ""
    parts = [f"{ref['gmacs']} G ({_delta(cost.gmacs, ref['gmacs'])})"]
    if "params" in ref:
        parts.append(f"{ref['params']} M params ({_delta(cost.params, ref['params'])})")
    return f"{', '.join(parts)}, {ref['source']}"


def _delta(measured: float, printed: str) -> str:
    """Our figure relative to the printed one, e.g. '-0.5%'."""
    return f"{100 * (measured / float(printed) - 1):+.1f}%"


def _view(cost: ViewCost) -> str:
    size = f"{cost.input_size}" if cost.frames == 1 else f"{cost.frames}x{cost.input_size}"
    return f"{cost.backbone}@{size}"


def _stages(cost: ViewCost) -> str:
    return " / ".join(f"{name} {g:.3f}" for name, g in cost.stage_gmacs.items())


def write_markdown(rows: list[ViewCost], out: TextIO) -> None:
    """The `## Backbone FLOPs` section kept in benchmarks/flops_table.md."""
    out.write(MARKDOWN_INTRO + "\n")
    out.write("| view | GMACs | params (M) | feature dim | cumulative GMACs by stage | "
              "published |\n|---|---:|---:|---:|---|---|\n")
    out.writelines(f"| {_view(c)} | {c.gmacs:.4f} | {c.params:.3f} | {c.feature_dim} | "
                  f"{_stages(c)} | {_published(c)} |\n" for c in rows)


def write_text(rows: list[ViewCost], out: TextIO) -> None:
    """A terminal table: one line per view, then its cumulative stage costs."""
    out.write(f"{'view':<22}{'GMACs':>10}{'params(M)':>11}{'dim':>6}  published\n")
    for c in rows:
        out.write(f"{_view(c):<22}{c.gmacs:>10.4f}{c.params:>11.3f}{c.feature_dim:>6}  "
                  f"{_published(c)}\n")
        out.write(f"{'':<22}stages: {_stages(c)}\n")


def run_flops(args: argparse.Namespace) -> int:
    """Handler: parse entries, measure, print in the chosen format."""
    from backbones.flops import DEFAULT_ENTRIES, flops_table, parse_entry

    entries = args.backbone or DEFAULT_ENTRIES
    for entry in entries:
        parse_entry(entry)  # a bad entry is refused (error: ..., exit 2) before measuring any
    rows = flops_table(entries)
    if args.json:
        json.dump([dataclasses.asdict(c) for c in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.markdown:
        write_markdown(rows, sys.stdout)
    else:
        write_text(rows, sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `c2f flops` to the top-level parser."""
    parser = sub.add_parser(
        "flops",
        help="measure backbone multiply-adds and parameters (per stage and total)",
        description=(
            "Count multiply-adds (GMACs, what the papers call GFLOPs) and parameters of "
            "backbones at given input sizes, measured from the models with PyTorch's "
            "FlopCounterMode. Without --backbone, prints the published configurations "
            "(LiteEval, AR-Net, MF-Net), EfficientNet-B0@224 and AR-Net's resolution ladder."
        ),
    )
    parser.add_argument(
        "--backbone", action="append", metavar="NAME@SIZE",
        help="backbone and input size, e.g. resnet50@224, or NAME@FRAMESxSIZE for clip "
             "backbones, e.g. mfnet3d@16x224; repeat for several",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true",
                     help="print a Markdown section (as in benchmarks/flops_table.md)")
    fmt.add_argument("--json", action="store_true",
                     help="print a JSON list of ViewCost records")
    parser.set_defaults(handler=run_flops)
