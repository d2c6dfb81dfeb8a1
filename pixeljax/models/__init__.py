"""Victim networks: AllConv, NiN, VGG16 and the CPU stand-in SmallCNN."""

from pixeljax.models.allconv import AllConv as AllConv
from pixeljax.models.nin import NiN as NiN
from pixeljax.models.registry import MODELS as MODELS
from pixeljax.models.registry import create_model as create_model
from pixeljax.models.registry import make_predict as make_predict
from pixeljax.models.registry import param_count as param_count
from pixeljax.models.smallcnn import SmallCNN as SmallCNN
from pixeljax.models.vgg import VGG16 as VGG16

__all__ = [
    "AllConv",
    "MODELS",
    "NiN",
    "SmallCNN",
    "VGG16",
    "create_model",
    "make_predict",
    "param_count",
]
