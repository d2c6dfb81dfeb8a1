"""Victim networks: AllConv, NiN, VGG16 and the CPU stand-in SmallCNN."""

from pixeljax.models.allconv import AllConv as AllConv
from pixeljax.models.nin import NiN as NiN
from pixeljax.models.registry import MODELS as MODELS
from pixeljax.models.registry import create_model as create_model
from pixeljax.models.registry import make_predict as make_predict
from pixeljax.models.registry import param_count as param_count
from pixeljax.models.smallcnn import SmallCNN as SmallCNN
from pixeljax.models.vgg import VGG16 as VGG16
from pixeljax.models.weights import load_predict as load_predict
from pixeljax.models.weights import load_victim as load_victim
from pixeljax.models.weights import load_weights as load_weights
from pixeljax.models.weights import save_weights as save_weights
from pixeljax.models.weights import shipped_card as shipped_card
from pixeljax.models.weights import shipped_models as shipped_models

__all__ = [
  "AllConv",
  "MODELS",
  "NiN",
  "SmallCNN",
  "VGG16",
  "create_model",
  "load_predict",
  "load_victim",
  "load_weights",
  "make_predict",
  "param_count",
  "save_weights",
  "shipped_card",
  "shipped_models",
]
