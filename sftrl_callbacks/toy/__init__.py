"""The embedded toy world: a tiny causal LM, a character tokenizer and a step-by-step arithmetic task.

It runs a real SFT on a laptop CPU in a minute or two, so the demo and the tests train for real.
"""

from ..verifiers import register_verifier
from .model import build_model
from .task import (
    ArithmeticTask,
    Problem,
    StepVerifier,
    ToySplits,
    final_answer,
    make_splits,
    problem_from_row,
    steps_are_correct,
    to_dataset,
)
from .tokenizer import build_tokenizer

# The strict step check reads the problem's operand columns, not an answer column.
register_verifier("toy-steps", StepVerifier)

__all__ = [
    "ArithmeticTask",
    "Problem",
    "StepVerifier",
    "ToySplits",
    "build_model",
    "build_tokenizer",
    "final_answer",
    "make_splits",
    "problem_from_row",
    "steps_are_correct",
    "to_dataset",
]
