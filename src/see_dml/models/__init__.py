from see_dml.models.backbones import Backbone, SmallConvNet, load_local_weights
from see_dml.models.head import EmbeddingHead

__all__ = ["Backbone", "EmbeddingHead", "SmallConvNet", "load_local_weights"]
