"""Method-agnostic networks."""

from daps.nets.mlp import MLPDecoder
from daps.nets.resnet import ResNetDecoder, ResNetValueNet
from daps.nets.transformer import ARTransformerEncoder, NACategoricalEncoder, NATransformerEncoder, Samples

__all__ = ["ARTransformerEncoder", "MLPDecoder", "NACategoricalEncoder", "NATransformerEncoder", "ResNetDecoder", "ResNetValueNet", "Samples"]
