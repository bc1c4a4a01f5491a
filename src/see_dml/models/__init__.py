from see_dml.models.backbones import Backbone, SmallConvNet, build_backbone, load_local_weights
from see_dml.models.head import EmbeddingHead

__all__ = ["Backbone", "EmbeddingHead", "SmallConvNet", "build_backbone", "load_local_weights"]
