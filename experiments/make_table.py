"""Runs into the paper-style results table: ``python experiments/make_table.py <folders> ...``
(``--help``). The command line of :mod:`see_dml.reporting.tables`, also installed as
``see-dml-table`` and ``python -m see_dml.reporting table``."""

from see_dml.reporting.tables import main

if __name__ == "__main__":
    main()
