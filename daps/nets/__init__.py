"""Method-agnostic networks."""

from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.bidirectional import NACategoricalEncoder, NATransformerEncoder
from daps.nets.mlp import MLPDecoder
from daps.nets.resnet import ResNetDecoder, ResNetValueNet
from daps.nets.sampling import Samples

__all__ = [
    "ARTransformerEncoder", "MLPDecoder", "NACategoricalEncoder", "NATransformerEncoder", "ResNetDecoder",
    "ResNetValueNet", "Samples",
]
