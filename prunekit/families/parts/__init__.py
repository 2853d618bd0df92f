"""Typed block parts; a family adapter is a list of them (see :mod:`.base`)."""

from .attention import Attention
from .base import Part, Sizes
from .experts import Experts
from .held import HeldMixer
from .mamba import MambaMixer
from .mamba2 import Mamba2Mixer
from .mlp import MLP

__all__ = ["MLP", "Attention", "Experts", "HeldMixer", "Mamba2Mixer", "MambaMixer", "Part", "Sizes"]
