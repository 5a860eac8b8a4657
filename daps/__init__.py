"""daps: discrete variational autoencoders trained by policy search (DAPS, ICLR 2026)."""

from daps.checkpoint import load_model
from daps.config import PRESETS, Config, get_preset, parse_overrides
from daps.methods import DAPS, METHODS, Output, Reconstruction, build_method

__all__ = [
    "DAPS",
    "METHODS",
    "PRESETS",
    "Config",
    "Output",
    "Reconstruction",
    "build_method",
    "get_preset",
    "load_model",
    "parse_overrides",
]

__version__ = "0.1.0"
