"""daps: discrete variational autoencoders trained by policy search (DAPS, ICLR 2026)."""

from daps.checkpoint import load_model
from daps.config import Config
from daps.config_io import parse_overrides
from daps.hub import from_pretrained
from daps.inputs import load_images, save_images
from daps.methods import DAPS, METHODS, MethodSpec, Output, Reconstruction, build_method, load_plugins, register
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
    "from_pretrained",
    "get_preset",
    "load_images",
    "load_model",
    "parse_overrides",
    "register",
    "save_images",
]

__version__ = "0.1.0"

load_plugins()  # methods of other installed packages (entry-point group "daps.methods"), now that daps is whole
