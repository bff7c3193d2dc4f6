"""Training batches drawn from memory-mapped token shards.

The batch of step s is a pure function of (seed, s): one global batch of batch_size x ranks x
micro-batches windows of seq_len + 1 tokens, chosen with numpy's generator keyed by those numbers,
cut into equal chunks; each (micro-batch, rank) takes its own. So the data position is the step
itself, a resumed run sees exactly the batches it would have seen, and the same rows make a step
however they are spread: 2 ranks of 4 rows, 1 rank of 8, or 1 rank accumulating 2 micro-batches of 4.

A window starts anywhere, or (`start_at_documents`) only where a document starts, so the model
sees every script from its shebang on as often as it sees the middle of one. A share of each
batch (`replay`) may come from another corpus: language replayed while fine-tuning on code keeps
what pretraining taught. Another share (`pairs_share`) may come from the comment-to-command
documents (tldr, NL2Bash), kept in chunks of their own, so that share holds whatever their size.
Each share is rounded to whole rows and drawn from its own random stream.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from core.errors import AcmError
from core.tokenizer.bpe import EOS_ID
from core.tokenizer.shards import TokenShards

VAL_STREAM = 1 << 40  # keeps validation draws apart from training draws
REPLAY_STREAM = 1 << 41  # keeps the replayed corpus's draws apart from the stage's own
PAIRS_STREAM = 1 << 42  # and the comment-to-command documents' draws apart from both


class Windows:
    """Where a window of seq_len + 1 tokens may start in one corpus's shards."""

    def __init__(self, shards: TokenShards, seq_len: int, what: str, at_documents: bool = False):
        self.arrays = [a for a in shards.arrays if a.size > seq_len + 1]
        if not self.arrays:
            raise AcmError(f"the {what} hold {shards.num_tokens:,} tokens, too few for one sequence of "
                           f"{seq_len + 1}: lower seq_len or fetch more data")
        self.seq_len = seq_len
        self.room = np.array([a.size - seq_len - 1 for a in self.arrays], dtype=np.int64)
        # a shard holds whole documents, so position 0 and each token after an <EOS> start one
        self.starts = [_document_starts(a, r) for a, r in zip(self.arrays, self.room)] if at_documents else None
        counts = self.room if self.starts is None else np.array([s.size for s in self.starts])
        self.weights = counts / counts.sum()
        self.num_tokens = sum(a.size for a in self.arrays)

    def pick(self, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, start) of `rows` windows."""
        which = rng.choice(len(self.arrays), size=rows, p=self.weights)
        if self.starts is None:
            return which, (rng.random(rows) * self.room[which]).astype(np.int64)
        index = (rng.random(rows) * np.array([self.starts[w].size for w in which])).astype(np.int64)
        return which, np.array([self.starts[w][i] for w, i in zip(which, index)], dtype=np.int64)

    def read(self, shard: int, start: int) -> np.ndarray:
        return np.asarray(self.arrays[shard][start:start + self.seq_len + 1], dtype=np.int32)


def _document_starts(tokens: np.ndarray, room: int) -> np.ndarray:
    after_eos = np.flatnonzero(np.asarray(tokens[:room]) == EOS_ID) + 1
    return np.concatenate([[0], after_eos[after_eos <= room]]).astype(np.int64)


class Batches:
    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, what: str = "token shards", at_documents: bool = False,
                 replay: TokenShards | None = None, replay_share: float = 0.0, replay_what: str = "replay shards",
                 micro_batches: int = 1, pairs: TokenShards | None = None, pairs_share: float = 0.0,
                 pairs_what: str = "comment-to-command shards"):
        self.own = Windows(shards, seq_len, what, at_documents)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.micro_batches = micro_batches  # set again when a resume keeps a run's global batch
        # (windows, share of the rows, random stream) of each corpus mixed into the stage's own
        self.mixed = [(Windows(extra, seq_len, name, at_documents), share, stream)
                      for extra, share, name, stream in ((replay, replay_share, replay_what, REPLAY_STREAM),
                                                         (pairs, pairs_share, pairs_what, PAIRS_STREAM))
                      if extra is not None and share > 0]
        self.num_tokens = self.own.num_tokens  # an epoch is one pass over the stage's own corpus

    @property
    def rows(self) -> int:
        """Rows of one global batch: every rank's micro-batches together."""
        return self.batch_size * self.world * self.micro_batches

    @property
    def replayed(self) -> int:
        """Rows of a global batch drawn from the replayed corpus."""
        return self._counts(self.rows).get(REPLAY_STREAM, 0)

    @property
    def paired(self) -> int:
        """Rows of a global batch drawn from the comment-to-command documents."""
        return self._counts(self.rows).get(PAIRS_STREAM, 0)

    def _counts(self, rows: int) -> dict[int, int]:
        """Rows of each mixed-in corpus (by stream), each share rounded, never more than the rows left
        but one: the stage's own corpus keeps a row of every batch (rounded alone, replay 0.45 and
        pairs 0.45 of 8 rows took 4 and 4, and a fine-tune saw no repository script at all)."""
        counts: dict[int, int] = {}
        for _, share, stream in self.mixed:
            counts[stream] = max(0, min(round(rows * share), rows - 1 - sum(counts.values())))
        return counts

    def _draw(self, key: list[int], rows: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        counts = self._counts(rows)
        sources = [(self.own, *self.own.pick(np.random.default_rng(key), rows - sum(counts.values())))]
        for windows, _, stream in self.mixed:
            if counts[stream]:
                sources.append((windows, *windows.pick(np.random.default_rng(key + [stream]), counts[stream])))
        everything = [(src, w, s) for src, which, starts in sources for w, s in zip(which, starts)]
        mine = everything[chunk * self.batch_size:(chunk + 1) * self.batch_size]
        windows = np.stack([src.read(w, s) for src, w, s in mine])
        return windows[:, :-1], windows[:, 1:]

    def train(self, step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return self._draw([self.seed, step, 0], self.rows, micro * self.world + self.rank)

    def val(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._draw([self.seed, VAL_STREAM, index], self.batch_size * self.world, self.rank)


class DrawnAhead:
    """Each step's batch drawn on a thread of its own while the step before is queued on the device.

    Drawing is NumPy work under Python's lock, and MLX lets go of the lock while it queues a step,
    so a batch drawn meanwhile costs the engine's thread nothing; on a GPU whose step is paced by the
    host that queues it, the draw was time the device stood idle. A batch is a function of its step,
    so what is drawn ahead is what would be drawn then; a step nothing was drawn ahead for (a call's
    first) is drawn at once. Rows come contiguous, ready to copy to the device.
    """

    def __init__(self, draw: Callable[[int], tuple[np.ndarray, np.ndarray]]):
        self._draw = draw
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="acm-batches")
        self._ahead: tuple[int, Future] | None = None

    def take(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Step `step`'s batch: the one drawn ahead for it, else drawn now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == step:
            return ahead[1].result()
        return self._contiguous(step)

    def draw(self, step: int) -> None:
        """Start drawing step `step`'s batch (one ahead at most: one not taken is dropped)."""
        self._ahead = (step, self._pool.submit(self._contiguous, step))

    def close(self) -> None:
        """Stop the thread (after the draw under way, if any)."""
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _contiguous(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._draw(step)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)
