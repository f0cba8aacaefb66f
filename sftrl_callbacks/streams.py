"""Random streams for sampling: one per sample, so that a sample's draws depend on its problem's seed and its
place among that problem's samples, never on which other rows share a batch, the batch size or the rank."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Uniforms:
    """The uniform draws of a call, one stream per sample: sample j of a prompt with seed s draws, at token t,
    the t-th output of SplitMix64 started from the j-th state of SeedSequence(s). So a sample's tokens depend on
    its prompt's seed and its own logits only, not on the other rows of the batch, the batch size or the rank
    that drew it. Made on the host in blocks of `block` tokens (one upload per block), 24-bit, so that the
    float32 value is exact and below 1."""

    block = 256
    _GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)

    def __init__(self, seeds: Sequence[int], counts: Sequence[int], device: torch.device) -> None:
        states = [np.random.SeedSequence(s).generate_state(c, np.uint64) for s, c in zip(seeds, counts) if c]
        self.states = np.concatenate(states) if states else np.zeros(0, np.uint64)
        self.device = device
        self._first, self._values = -1, None

    def at(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """The draws of output rows `rows` at token `t`."""
        first = t - t % self.block
        if first != self._first:
            self._first, self._values = first, self._make(first)
        return self._values[rows, t - first]

    def _make(self, first: int) -> torch.Tensor:
        steps = np.arange(first + 1, first + self.block + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the generator
            x = self.states[:, None] + steps[None, :] * self._GOLDEN
            x = (x ^ (x >> np.uint64(30))) * self._M1
            x = (x ^ (x >> np.uint64(27))) * self._M2
            x ^= x >> np.uint64(31)
        values = (x >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
        return torch.from_numpy(values).to(self.device)
