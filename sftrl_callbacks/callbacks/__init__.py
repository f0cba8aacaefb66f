"""Trainer callbacks: they decide *when* to measure and hand typed records on; the modules one level up
decide *what* (`heldout`, `measure`, `readiness`) and *where it goes* (`hub`, `sinks`, `report`)."""

from .heldout_loss import HeldOutLossCallback, HeldOutLossConfig
from .pass_at_k import PassAtKCallback, PassAtKCallbackConfig
from .rl_readiness import RLReadinessCallback, RLReadinessConfig

__all__ = [
    "HeldOutLossCallback",
    "HeldOutLossConfig",
    "PassAtKCallback",
    "PassAtKCallbackConfig",
    "RLReadinessCallback",
    "RLReadinessConfig",
]
