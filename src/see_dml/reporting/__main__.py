"""``python -m see_dml.reporting table|geometry|records|folds <folders> ...``: the results table
of a sweep (:mod:`see_dml.reporting.tables`), its geometry report
(:mod:`see_dml.reporting.geometry_table`), its runs' records without checkpoints
(:mod:`see_dml.reporting.records`), or k-fold models on the test classes, each and
concatenated (:mod:`see_dml.reporting.folds`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("table", "geometry", "records", "folds")
    if not argv or argv[0] not in commands:
        asked = argv[:1] in (["-h"], ["--help"])  # --help: to stdout, status 0
        print(f"usage: python -m see_dml.reporting {{{','.join(commands)}}} <folders> ... "
              "(--help after the command for its options)",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    if argv[0] == "table":
        from see_dml.reporting.tables import main as table

        table(argv[1:])
        return 0
    if argv[0] == "records":
        from see_dml.reporting.records import main as records

        return records(argv[1:])
    if argv[0] == "folds":
        from see_dml.reporting.folds import main as folds

        return folds(argv[1:])
    from see_dml.reporting.geometry_table import main as geometry

    return geometry(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
