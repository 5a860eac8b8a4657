"""Method-agnostic networks."""

from daps.nets.mlp import MLPDecoder
from daps.nets.transformer import ARTransformerEncoder, Samples

__all__ = ["ARTransformerEncoder", "MLPDecoder", "Samples"]
