"""Kept for compatibility: re-exports the transformer names now in layers, patches, kv_cache, sampling, ar_encoder
and bidirectional."""

from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.bidirectional import NACategoricalEncoder, NATransformerEncoder
from daps.nets.kv_cache import GrowingKVCache, KVCache, StaticKVCache, cache_buckets
from daps.nets.layers import LN_EPS, MLP, Attention, DecoderBlock, EncoderBlock, dense, lecun_normal_, sinusoidal_table
from daps.nets.patches import patch_grid, patch_shape, patchify
from daps.nets.sampling import Samples

__all__ = [
    "LN_EPS", "MLP", "ARTransformerEncoder", "Attention", "DecoderBlock", "EncoderBlock", "GrowingKVCache", "KVCache",
    "NACategoricalEncoder", "NATransformerEncoder", "Samples", "StaticKVCache", "cache_buckets", "dense",
    "lecun_normal_", "patch_grid", "patch_shape", "patchify", "sinusoidal_table",
]
