"""sftrl-callbacks: learn during SFT which checkpoint makes the best start for RL.

The public names are imported on first use, so that `sftrl fit`, `sftrl report` and the pure statistics
(`pass_at_k`) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "HeldOutLossCallback": "callbacks",
    "HeldOutLossConfig": "callbacks",
    "PassAtKCallback": "callbacks",
    "PassAtKCallbackConfig": "callbacks",
    "RLReadinessCallback": "callbacks",
    "RLReadinessConfig": "callbacks",
    "PassAtKConfig": "contracts",
    "PassAtKResult": "contracts",
    "load_result": "contracts",
    "measure_pass_at_k": "measure",
    "bootstrap_ci": "passk",
    "extrapolate_pass_at_k": "passk",
    "pass_at_k": "passk",
    "pass_at_k_curve": "passk",
    "Completion": "contracts",
    "HFSampler": "hf_sampler",
    "Sampler": "contracts",
    "SamplingParams": "contracts",
    "register_sampler": "contracts",
    "Image": "sinks",
    "JsonlSink": "sinks",
    "MetricSink": "sinks",
    "Table": "sinks",
    "VLLMSampler": "vllm_sampler",
    "AnswerVerifier": "verifiers",
    "MathVerifyVerifier": "verifiers",
    "RewardFunctionVerifier": "verifiers",
    "Verifier": "verifiers",
    "register_verifier": "verifiers",
}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .callbacks import (  # noqa: F401
        HeldOutLossCallback,
        HeldOutLossConfig,
        PassAtKCallback,
        PassAtKCallbackConfig,
        RLReadinessCallback,
        RLReadinessConfig,
    )
    from .contracts import (  # noqa: F401
        Completion,
        PassAtKConfig,
        PassAtKResult,
        Sampler,
        SamplingParams,
        load_result,
        register_sampler,
    )
    from .hf_sampler import HFSampler  # noqa: F401
    from .measure import measure_pass_at_k  # noqa: F401
    from .passk import bootstrap_ci, extrapolate_pass_at_k, pass_at_k, pass_at_k_curve  # noqa: F401
    from .sinks import Image, JsonlSink, MetricSink, Table  # noqa: F401
    from .verifiers import (  # noqa: F401
        AnswerVerifier,
        MathVerifyVerifier,
        RewardFunctionVerifier,
        Verifier,
        register_verifier,
    )
    from .vllm_sampler import VLLMSampler  # noqa: F401
