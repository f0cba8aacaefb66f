"""sftrl-callbacks: learn during SFT which checkpoint makes the best start for RL."""

from .callbacks import (
    HeldOutLossCallback,
    HeldOutLossConfig,
    PassAtKCallback,
    PassAtKCallbackConfig,
    RLReadinessCallback,
    RLReadinessConfig,
)
from .measure import PassAtKConfig, PassAtKResult, measure_pass_at_k
from .passk import bootstrap_ci, extrapolate_pass_at_k, pass_at_k, pass_at_k_curve
from .sampling import HFSampler, Sampler, SamplingParams
from .sinks import JsonlSink, MetricSink, WandbSink
from .verifiers import AnswerVerifier, MathVerifyVerifier, RewardFunctionVerifier, Verifier

__all__ = [
    "AnswerVerifier",
    "HFSampler",
    "HeldOutLossCallback",
    "HeldOutLossConfig",
    "JsonlSink",
    "MathVerifyVerifier",
    "MetricSink",
    "PassAtKCallback",
    "PassAtKCallbackConfig",
    "PassAtKConfig",
    "PassAtKResult",
    "RLReadinessCallback",
    "RLReadinessConfig",
    "RewardFunctionVerifier",
    "Sampler",
    "SamplingParams",
    "Verifier",
    "WandbSink",
    "bootstrap_ci",
    "extrapolate_pass_at_k",
    "measure_pass_at_k",
    "pass_at_k",
    "pass_at_k_curve",
]
__version__ = "0.1.0"
