"""``omnifm reproduce TABLE [--scale S] [--out DIR] [--resume | --overwrite] [--tables DIR] ...`` and
``omnifm reproduce list`` (added to the ``omnifm`` command by :func:`add_parser`)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Tuple

from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce import registry
from omnifm_jax.reproduce.runner import render, reproduce, table_listing

__all__ = ["parse_seeds", "add_parser"]


def parse_seeds(text: str) -> Tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def _main_args(args) -> int:
    """``omnifm reproduce`` (see :mod:`omnifm_jax.cli`)."""
    tables = list(args.tables)
    if args.table == "list":
        print(table_listing(tables=tables))
        return 0
    if args.render_only:
        name = registry.get_table(args.table, tables).name
        render(name, args.out or Path("runs") / "reproduce" / name, rule=args.eval, tables=tables)
        print(f"rewrote {name}.md and {name}.png from its records")
        return 0
    split = lambda s: None if s is None else [x for x in s.split(",")]  # noqa: E731
    reproduce(args.table, scale=args.scale, out=args.out, seeds=parse_seeds(args.seeds), rounds=args.rounds,
              rows=split(args.only), cols=split(args.cols), overrides=args.set, rule=args.eval,
              progress=not args.quiet, log=lambda s: print(s, flush=True),
              command="omnifm " + shlex.join(getattr(args, "argv", None) or sys.argv[1:]),
              dry_run=args.dry_run, tables=tables, resume=args.resume, overwrite=args.overwrite)
    return 0


def add_parser(sub) -> None:
    """Add ``reproduce`` to the ``omnifm`` subcommands."""
    p = sub.add_parser("reproduce", help="reproduce a table of the paper (mean ± std over seeds vs the paper)",
                       description="Reproduce a table or figure of the paper, or a study, from its table file "
                                   "(experiments/paper/, experiments/studies/ of the checkout, or --tables DIR). "
                                   "'omnifm reproduce list' shows the tables, their rows, columns and scales.")
    p.add_argument("table", help="a table's name (table1, table2, table6, table7, table8, fig5, ...), or 'list'")
    p.add_argument("--tables", action="append", default=[], metavar="DIR",
                   help="a folder of table files, besides experiments/paper and experiments/studies of the "
                        "checkout (repeatable; needed where the package is installed without its checkout)")
    p.add_argument("--scale", default=None,
                   help="one of the table's scales (see 'list'); usually smoke: minutes on a CPU with stand-in "
                        "data (the default); paper: the paper's protocol (GPU, hours; the expected time is printed "
                        "first); tiny: tests only")
    p.add_argument("--out", default=None, help="output directory (default runs/reproduce/<table>)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--rounds", type=int, default=None, help="override the number of rounds of every cell")
    p.add_argument("--only", default=None, metavar="ROWS", help="comma-separated row keys or labels to run")
    p.add_argument("--cols", default=None, metavar="COLS", help="comma-separated column keys or labels to run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every cell (repeatable)")
    p.add_argument("--eval", default=None, choices=("best", "last"),
                   help="evaluation rule of the tables: PFLlib's best round or the last round (default: the "
                        "table's, usually best)")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells that <out>/<table>_cells.jsonl holds (finished with the same config) and "
                        "run only the others")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the table's files in --out (without --resume or --overwrite, a folder that "
                        "holds them is refused)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite <table>.md and .png in --out from its <table>.csv or _cells.jsonl (e.g. with "
                        "--eval last); run nothing")
    p.set_defaults(func=_main_args)
