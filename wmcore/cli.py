"""The ``wmcore`` command. Bad input exits 2 with a message naming what was wrong; nothing is overwritten."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_drift
    from .report import DriftReport

    report = DriftReport.load(args.report)
    out = args.out or Path(args.report).with_suffix(".png")
    print(plot_drift(report, out))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .report import DriftReport

    r = DriftReport.load(args.report)
    print(f"model {r.model.get('name')}  data {r.data.get('id')}  ({r.data.get('episodes')} episodes, H={r.horizon})")
    print(f"chance level {r.chance_level:.3f} (centred {r.chance_level_centred:.3f})")
    for loop, row in r.summary().items():
        cells = "  ".join(f"{k}={'-' if v is None else (f'{v:.3f}' if isinstance(v, float) else v)}" for k, v in row.items())
        print(f"  {loop:<12} {cells}")
    for g in r.gates:
        print(f"  [{'PASS' if g.passed else 'FAIL'}] {g.name}: {g.message}")
    return 0 if r.passed else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wmcore", description="Latent-drift benchmarks for action-conditioned world models.")
    p.add_argument("--version", action="version", version=f"wmcore {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("plot", help="draw the drift plot of a saved DriftReport JSON")
    sp.add_argument("report", help="a DriftReport JSON written by a run")
    sp.add_argument("--out", help="PNG to write (default: the report's name with .png; never overwritten)")
    sp.set_defaults(func=_cmd_plot)
    ss = sub.add_parser("show", help="print a saved DriftReport's summary and gates (exit 1 if a gate failed)")
    ss.add_argument("report")
    ss.set_defaults(func=_cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # WMError included: bad input the user can fix
        print(f"wmcore: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
