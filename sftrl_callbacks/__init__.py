"""sftrl-callbacks: learn during SFT which checkpoint makes the best start for RL."""

from .callbacks import HeldOutLossCallback, HeldOutLossConfig

__all__ = ["HeldOutLossCallback", "HeldOutLossConfig"]
__version__ = "0.1.0"
