"""One run's evaluation: what it computed and what it writes.

- :mod:`~see_dml.evaluation.report`: the evaluation result of a split's embeddings (one kNN
  search, :mod:`see_dml.metrics`) and the per-run report (``metrics.json``, ``metrics.md``,
  the embedding export, the plots);
- :mod:`~see_dml.evaluation.embedding_files`: the embedding export's on-disk layout;
- :mod:`~see_dml.evaluation.geometry`: what a method does to the embedding space's geometry;
- :mod:`~see_dml.evaluation.plots`: the figures of one trained embedding.

Cross-run tables and statistics are :mod:`see_dml.reporting`'s.
"""
