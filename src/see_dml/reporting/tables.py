"""The command line of the results tables (``experiments/make_table.py``, ``see-dml-table``,
``python -m see_dml.reporting table``): a sweep's runs into the paper-style table, mean ± std
over seeds and the paired difference of each synthesiser to the plain loss with its 95 %
interval. How runs are pooled, paired and laid out: ``experiments/README.md``; the parts:
:mod:`~see_dml.reporting.pooling`, :mod:`~see_dml.reporting.pairing`,
:mod:`~see_dml.reporting.published`, :mod:`~see_dml.reporting.layouts`,
:mod:`~see_dml.reporting.figures`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from see_dml.reporting.figures import paper_plot, plot
from see_dml.reporting.layouts import (
    LAYOUTS,
    metric_columns,
    paper_heading,
    paper_legend,
    paper_table,
    to_csv,
    to_markdown,
    to_paper_csv,
    to_paper_markdown,
)
from see_dml.reporting.pairing import missing_notes, table_rows
from see_dml.reporting.pooling import (
    CHECKPOINTS,
    CODE_KEYS,
    KEY_NAMES,
    RECORDED_KEYS,
    SETUP_KEYS,
    check_checkpoint,
    check_provenance,
    collect,
    listing,
    named_columns,
    unfinished,
)
from see_dml.reporting.published import (
    PUBLISHED_FILE,
    add_published,
    load_published,
    protocol_line,
    published_entry,
    run_protocol,
)
from see_dml.runtime.cli import exit_with_error
from see_dml.runtime.errors import TableError


def _write_tables(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The tables, plot and CSV of ``main``'s arguments; returns the Markdown printed."""
    cells = collect(args.folders)
    if not cells:
        parser.error(f"no finished runs (metrics.json + config.yaml) under {args.folders}")
    check_checkpoint(cells, args.checkpoint)
    provenance_notes = check_provenance(cells, args.pool_commits)
    rows = table_rows(cells, args.baseline, args.checkpoint, tuple(args.tuned))
    notes = ([] if args.published == "none"
             else add_published(rows, load_published(Path(args.published)), args.checkpoint))
    notes += [*missing_notes(rows), *provenance_notes]
    layout = args.layout
    if layout == "auto":
        layout = "paper" if len({row["dataset"] for row in rows}) > 1 else "long"
    shown = rows[0]["metrics"] if rows else []
    unknown = [m for m in args.plot_metrics if m not in shown]
    if layout == "long" and unknown:
        parser.error(f"--plot-metrics {unknown[0]}: not a metric column of this table (its "
                     f"metric columns, from the runs' metrics.json: {', '.join(shown)})")
    out = args.folders[0]
    if layout == "paper":
        table = paper_table(rows, args.baseline)
        markdown = "\n\n".join([paper_heading(table, args.checkpoint), to_paper_markdown(table),
                                 protocol_line(rows), *paper_legend(table, args.baseline),
                                 *notes])
        (out / "results_paper.md").write_text(markdown + "\n")
        (out / "results_paper.csv").write_text(to_paper_csv(table) + "\n")
        paper_plot(table, out / "results_paper.png")
    else:
        prefix, what = CHECKPOINTS[args.checkpoint]
        heading = ([] if args.checkpoint == "val" else
                   [f"Checkpoint: {what} (`--checkpoint {args.checkpoint}`, `{prefix}*` in "
                    "metrics.json)."])
        markdown = "\n\n".join([*heading, to_markdown(rows, args.checkpoint),
                                 protocol_line(rows), *notes])
        (out / "results.md").write_text(markdown + "\n")
        (out / "results.csv").write_text(to_csv(rows) + "\n")
        plot(rows, out / "results.png", tuple(args.plot_metrics))
    return markdown


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--baseline", default="none",
                        help="synthesis label of the rows the Δ columns compare to")
    parser.add_argument("--checkpoint", choices=list(CHECKPOINTS), default="val",
                        help="which checkpoint's test metrics: " + "; ".join(
                            f"{name}: {what} ({prefix}*)"
                            for name, (prefix, what) in CHECKPOINTS.items()))
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="paper: datasets side by side (results_paper.md/.csv); long: one "
                             "row per dataset and setting (results.md/.csv/.png); auto: paper "
                             "when the runs cover more than one dataset")
    parser.add_argument("--plot-metrics", nargs="+", default=["MAP@R"], metavar="COLUMN",
                        help="metrics plotted against embedding size, one panel each, by "
                             "their column in the long table (R@1, MAP@R, RP, R@1 final, ...: "
                             "the metrics the runs hold; long layout)")
    parser.add_argument("--published", default=str(PUBLISHED_FILE),
                        help="YAML of published R@1 shown beside ours ('none': no column)")
    parser.add_argument("--pool-commits", action="store_true",
                        help="pool the seeds of a config across code versions "
                             "(provenance/commit, provenance/dirty), naming the commits under "
                             "the table; library versions and devices must still agree")
    parser.add_argument("--tuned", nargs="+", default=[], metavar="KEY",
                        help="config keys each arm tuned for itself (python -m see_dml.tune): "
                             "a row is paired with the baseline that differs in these keys "
                             "(and the keys under them), seed by seed")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    try:
        markdown = _write_tables(args, parser)
    except TableError as err:
        exit_with_error(str(err))
    print(markdown)
    missing = unfinished(args.folders)
    if missing:  # said where it is seen, not written into the results files
        print(f"\nNot in the table: {len(missing)} run(s) without metrics.json (still "
              f"running, failed or stopped; see each train.log):\n  {listing(missing)}",
              file=sys.stderr)
    return markdown


def cli() -> None:
    """The ``see-dml-table`` console script: :func:`main`, exit status 0 (a console script's
    return value would be its exit status, and the Markdown is no status)."""
    main()


# what experiments/make_table.py and the tests reach through this module
__all__ = [
    "CHECKPOINTS",
    "CODE_KEYS",
    "KEY_NAMES",
    "LAYOUTS",
    "PUBLISHED_FILE",
    "RECORDED_KEYS",
    "SETUP_KEYS",
    "add_published",
    "check_checkpoint",
    "check_provenance",
    "cli",
    "collect",
    "listing",
    "load_published",
    "main",
    "metric_columns",
    "missing_notes",
    "named_columns",
    "paper_heading",
    "paper_legend",
    "paper_plot",
    "paper_table",
    "plot",
    "protocol_line",
    "published_entry",
    "run_protocol",
    "table_rows",
    "to_csv",
    "to_markdown",
    "to_paper_csv",
    "to_paper_markdown",
    "unfinished",
]
