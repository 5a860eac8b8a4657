"""Method-agnostic networks."""

from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.bidirectional import NACategoricalEncoder, NATransformerEncoder
from daps.nets.mlp import MLPDecoder
from daps.nets.resnet import ResNetDecoder, ResNetValueNet
from daps.nets.sampling import Samples
from daps.nets.trajectory import TrajectoryDecoder

Decoder = MLPDecoder | ResNetDecoder | TrajectoryDecoder
"""A generative network: codes or per-token latents -> the likelihood's parameters (``decode_latents``)."""

__all__ = [
    "ARTransformerEncoder", "Decoder", "MLPDecoder", "NACategoricalEncoder", "NATransformerEncoder", "ResNetDecoder",
    "ResNetValueNet", "Samples", "TrajectoryDecoder",
]
