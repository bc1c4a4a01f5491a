"""A trained checkpoint put to use: :mod:`~see_dml.serving.inference` (a checkpoint opened for
inference, the one way every tool loads a model), :mod:`~see_dml.serving.image_sets` (the
images a query or gallery names), :mod:`~see_dml.serving.gallery_index` (a saved faiss index
and its sidecar) and :mod:`~see_dml.serving.onnx_graph` (the model as one ONNX graph)."""
