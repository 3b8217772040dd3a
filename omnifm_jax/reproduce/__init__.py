"""Reproduce the paper's tables: ``omnifm reproduce TABLE [--scale S] [--out DIR] [--resume | --overwrite]``.

Each table, figure or study is one file (``experiments/paper/<name>.py``,
``experiments/studies/<name>.py``, or a folder named by ``--tables``) that declares a
:class:`Table`: rows, columns, the config and overrides of every :class:`Cell`, the paper's
numbers (transcribed once, as :class:`PrintedRow` s, and checked against the paper's text by
the tests), the :class:`Claim` s to test, and the :class:`Scale` s it runs at. This package
is the machinery, the same for every table:

==============================  ==========================================================
:mod:`~.spec`                   the dataclasses a table file builds, the paper metrics
:mod:`~.methods`                the compared methods' display names and hyper-parameters
:mod:`~.settings`               the shared scales (paper, smoke, tiny) and their blocks
:mod:`~.registry`               finding table files
:mod:`~.plan`                   cells -> validated configs -> compiled programs
:mod:`~.execution`              data pre-flight, running the programs
:mod:`~.records`                per-cell records, CSV / JSONL
:mod:`~.stats`                  mean ± std over seeds, claims' verdicts
:mod:`~.writers`                markdown, plot, protocol.md
:mod:`~.runner`                 :func:`reproduce`, :func:`render`, :func:`table_listing`
:mod:`~.cli`                    the ``omnifm reproduce`` command
==============================  ==========================================================

See ``docs/reproduction.md`` for the commands, the scales and how to add a table.
"""
from __future__ import annotations

from omnifm_jax.reproduce.cli import add_parser, parse_seeds
from omnifm_jax.reproduce.execution import check_data, execute
from omnifm_jax.reproduce.methods import METHODS, Method, method
from omnifm_jax.reproduce.plan import Plan, PlannedCell, Program, build_plan, cell_config
from omnifm_jax.reproduce.records import read_csv, read_jsonl, records_from, references_from, write_csv
from omnifm_jax.reproduce.registry import TABLES, available_tables, find_tables, get_table, load_dir
from omnifm_jax.reproduce.runner import output_files, render, reproduce, table_claim, table_listing
from omnifm_jax.reproduce.settings import standard_scales
from omnifm_jax.reproduce.spec import (
    METRICS,
    Cell,
    Claim,
    Metric,
    PaperText,
    Pretrain,
    PrintedRow,
    Reference,
    Scale,
    Setting,
    Table,
    beats_all,
    paper_metric,
    transcription_errors,
)
from omnifm_jax.reproduce.stats import (
    PLATEAU_ROUNDS,
    aggregate,
    converged,
    evaluate_claims,
    mean_std,
    per_seed,
    unconverged,
    verdict,
)
from omnifm_jax.reproduce.writers import format_measured, markdown, protocol_text, write_markdown, write_plot

__all__ = ["METRICS", "Metric", "paper_metric", "Cell", "Claim", "Setting", "Scale", "Reference", "Pretrain",
           "PrintedRow", "PaperText", "Table", "beats_all", "transcription_errors", "METHODS", "Method", "method",
           "standard_scales",
           "TABLES", "find_tables", "get_table", "load_dir", "available_tables", "Plan", "PlannedCell", "Program",
           "build_plan", "cell_config", "check_data", "execute", "records_from", "references_from", "read_csv",
           "read_jsonl", "write_csv", "mean_std", "per_seed", "aggregate", "verdict", "evaluate_claims",
           "PLATEAU_ROUNDS", "converged", "unconverged",
           "format_measured", "markdown", "write_markdown", "write_plot", "protocol_text", "table_claim",
           "output_files", "reproduce", "render", "table_listing", "parse_seeds", "add_parser"]
