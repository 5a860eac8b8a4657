"""daps: discrete variational autoencoders trained by policy search (DAPS, ICLR 2026)."""

from daps.checkpoint import load_model
from daps.config import Config
from daps.config_io import parse_overrides
from daps.methods import DAPS, METHODS, MethodSpec, Output, Reconstruction, build_method, register
from daps.presets import PRESETS, get_preset

__all__ = [
    "DAPS",
    "METHODS",
    "MethodSpec",
    "PRESETS",
    "Config",
    "Output",
    "Reconstruction",
    "build_method",
    "get_preset",
    "load_model",
    "parse_overrides",
    "register",
]

__version__ = "0.1.0"
