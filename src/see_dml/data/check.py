"""Check a dataset before training on it.

    python -m see_dml.data.check dataset=cub dataset.root=/data/CUB_200_2011

Builds the dataset's splits exactly as training does (index files, official counts when
``dataset.strict_counts``, the held-out validation classes), decodes every image, checks that
the training classes are disjoint from the evaluation classes, and prints what it found. The
last stdout line is a JSON object ``{split: {"images": N, "classes": C}}`` for scripts. The
exit status is 2 (:data:`see_dml.runtime.errors.USER_ERROR_STATUS`, as for every tool) when the
data is unusable, with the reasons on stderr as ``error:`` lines.
"""

from __future__ import annotations

import json

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from see_dml.data.validation import check_source, format_report
from see_dml.runtime.cli import exit_with_error, quiet_third_party
from see_dml.runtime.config import hydra_main
from see_dml.runtime.errors import DatasetNotFoundError


@hydra_main("check")
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    try:
        source = hydra.utils.instantiate(cfg.dataset)
    except InstantiationException as err:
        exit_with_error(f"cannot build the dataset from the 'dataset' config: {err}")
    try:
        report = check_source(source, bool(cfg.check.verify_images), int(cfg.check.workers))
    except (DatasetNotFoundError, ValueError) as err:
        # ValueError: an index file that does not parse; the message names file and line.
        exit_with_error(str(err))
    print(format_report(report, source))
    print(json.dumps(report.counts()), flush=True)
    if not report.ok:
        exit_with_error("the dataset is not usable:\n"
                        + "\n".join(f"  - {p}" for p in report.problems))


if __name__ == "__main__":
    main()
