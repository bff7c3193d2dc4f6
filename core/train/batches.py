"""Training batches drawn from memory-mapped token shards.

The batch of step s is a pure function of (seed, s, micro-batch): random windows of seq_len + 1
tokens, chosen with numpy's generator keyed by those numbers. So the data position is the step
itself, a resumed run sees exactly the batches it would have seen, and with several ranks each
takes its slice of one global batch (the same rows one process would take).
"""
from __future__ import annotations

import numpy as np

from core.errors import AcmError
from core.tokenizer.shards import TokenShards

VAL_STREAM = 1 << 40  # keeps validation draws apart from training draws


class Batches:
    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, what: str = "token shards"):
        self.arrays = [a for a in shards.arrays if a.size > seq_len + 1]
        if not self.arrays:
            raise AcmError(f"the {what} hold {shards.num_tokens:,} tokens, too few for one sequence of "
                           f"{seq_len + 1}: lower seq_len or fetch more data")
        self.seq_len, self.batch_size, self.seed, self.rank, self.world = seq_len, batch_size, seed, rank, world
        room = np.array([a.size - seq_len - 1 for a in self.arrays], dtype=np.float64)
        self.weights = room / room.sum()
        self.num_tokens = sum(a.size for a in self.arrays)

    def _draw(self, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(key)
        rows = self.batch_size * self.world
        which = rng.choice(len(self.arrays), size=rows, p=self.weights)
        starts = (rng.random(rows) * np.array([self.arrays[w].size - self.seq_len - 1 for w in which])).astype(np.int64)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        windows = np.stack([np.asarray(self.arrays[w][s:s + self.seq_len + 1], dtype=np.int32)
                            for w, s in zip(which[mine], starts[mine])])
        return windows[:, :-1], windows[:, 1:]

    def train(self, step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return self._draw([self.seed, step, micro])

    def val(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._draw([self.seed, VAL_STREAM, index])
