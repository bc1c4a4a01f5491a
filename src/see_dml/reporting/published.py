"""The authors' published numbers beside ours (``published.yaml``), and which protocol
chose a run's checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from see_dml.runtime.errors import TableError

#: the published R@1 (a string: the number, and another backbone's name when it stands in) and
#: our mean R@1 minus it, inserted after our R@1
PUBLISHED = ("R@1 paper", "ΔR@1 paper")


PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


def load_published(path: Path) -> dict[str, Any]:
    """``published.yaml``: ``{"sources": {name: {...}}, "results": [entry]}``."""
    published = yaml.safe_load(path.read_text())
    for entry in published["results"]:
        if entry["source"] not in published["sources"]:
            raise TableError(f"{path}: source '{entry['source']}' is not under sources:")
    return published


def published_entry(row: dict[str, Any], published: dict[str, Any]
                     ) -> tuple[dict[str, Any], bool] | None:
    """The published entry for a row's setting and whether it is that very setting; else one
    that names the setting in ``closest_for``; else ``None``."""
    def same(entry: dict[str, Any], exact: bool) -> bool:
        settings = [entry] if exact else entry.get("closest_for", [])
        return (row["dataset"] in entry["recall@1"] and entry["loss"] == row["loss"]
                and entry["synthesis"] == row["synthesis"]
                and any(s["backbone"] == row["backbone"] and str(s["dim"]) == row["dim"]
                        for s in settings))
    for exact in (True, False):
        for entry in published["results"]:
            if same(entry, exact):
                return entry, exact
    return None


#: the two protocols (conf/protocol/): what each is, for the line above every table
PROTOCOLS = {
    "authors": "the authors' (every training class trains; the test split is scored in the "
               "epochs their scripts evaluate)",
    "held_out": "ours (held-out validation classes choose the checkpoint; the test classes "
                "are read once)",
}


def run_protocol(cfg: dict[str, Any]) -> str:
    """A run's protocol: its ``protocol`` key, or for runs from before that key, ``authors``
    when it had no validation classes and scored the test split every epoch."""
    if cfg.get("protocol"):
        return str(cfg["protocol"])
    val_fraction = (cfg.get("dataset") or {}).get("val_fraction")
    return "authors" if val_fraction == 0 and cfg.get("test_every_epoch") else "held_out"


def protocol_line(rows: list[dict[str, Any]]) -> str:
    """Which protocol the table's runs follow (a column when they differ)."""
    names = sorted({row["protocol"] for row in rows})
    if len(names) == 1:
        return f"Protocol: {PROTOCOLS.get(names[0], names[0])} (`protocol={names[0]}`)."
    return ("Protocols differ between rows (the protocol column): " + "; ".join(
        f"`{n}`: {PROTOCOLS.get(n, n)}" for n in names) + ".")


def add_published(rows: list[dict[str, Any]], published: dict[str, Any],
                  checkpoint: str = "val") -> list[str]:
    """Fill the ``PUBLISHED`` columns of each row; returns the notes on the sources used.

    A published number is set only beside a run of the authors' protocol read at their
    checkpoint (``--checkpoint best_on_test``): the authors trained on every training class
    and reported the best epoch on test, and a number of the other protocol is not that
    number. Rows that have a published number but not that protocol and checkpoint get a
    note saying why the column is empty."""
    used: dict[str, None] = {}
    refused = 0
    for row in rows:
        row[PUBLISHED[0]] = row[PUBLISHED[1]] = None
        match = published_entry(row, published)
        if match is None:
            continue
        if row["protocol"] != "authors" or checkpoint != "best_on_test":
            refused += 1
            continue
        entry, exact = match
        value = entry["recall@1"][row["dataset"]]
        row[PUBLISHED[0]] = f"{value:.1f}" + ("" if exact else f" ({entry['backbone']})")
        row[PUBLISHED[1]] = row["R@1"][0] - value
        used[entry["source"]] = None
    notes = []
    for name in used:
        source = published["sources"][name]
        where = f"DOI {source['doi']}" if "doi" in source else source.get("url", "")
        notes.append(f"R@1 paper: {source['cite']}, {where} ({source['protocol']}; ours: the "
                     "authors' protocol, best epoch on the test classes).")
    if refused:
        notes.append(f"R@1 paper: not shown beside {refused} row(s) with a published number: "
                     "it is shown only beside runs of the authors' protocol "
                     "(`protocol=authors`) read with `--checkpoint best_on_test`, as the "
                     "authors report it.")
    return notes
