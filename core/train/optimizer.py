"""AdamW over the model's parameters packed into flat float32 buffers.

MLX's `optim.AdamW` updates each parameter tensor on its own: a GPT has ~150 of them, so a step
ends in hundreds of small kernels (the update, its scalars, a cast of each gradient, a norm term),
most too small to fill the GPU. Here the float32 master weights, and AdamW's moments, live in two
flat buffers (matrices, which are decayed, and vectors, which are not), and beside each a copy of
the weights in the compute dtype (bfloat16 by default). Each step:

- the model reads views (slices) of the compute-dtype copies: no per-tensor casts;
- its gradients come back with respect to those views and are concatenated into one flat
  gradient per buffer, in the compute dtype (what the matrix products produced; nothing is lost);
- the global norm is a sum over 1,024-long rows (no squared copy), then one fused kernel per
  buffer clips, updates the weights and moments with the arithmetic and order of `optim.AdamW`'s
  bias-corrected update (`reference_adamw` gives the same weights: tests/core/train/test_optimizer.py), and
  writes the next step's compute-dtype copy. The float32 weights are read by nothing else, so
  the update can write them in place.

With `muon=True` the transformer blocks' matrices form a third buffer updated by Muon (momentum,
then the update orthogonalised by a Newton-Schulz iteration, per matrix, as `optim.Muon` computes
it, with decoupled weight decay); embeddings, the head and the vectors stay with AdamW, as Muon's
authors advise. Its learning rate follows AdamW's schedule, `muon_lr / learning_rate` times larger.

The optimizer state in checkpoints keeps `optim.AdamW`'s per-parameter layout (`step`,
`learning_rate`, `<param>.m`, `<param>.v`; a Muon matrix has its momentum as `.m` and no `.v`), so
checkpoints from either optimizer resume in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import groupby

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from core.model.cuda_join import joined

BETAS = (0.9, 0.95)
EPS = 1e-8
ROW = 1024  # buffers are padded to whole rows of this length for the norm's row sums
GROUPS = ("decay", "plain", "muon")  # matrices decay; biases and gains do not; muon: blocks' matrices
MUON_MOMENTUM = 0.95
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz iteration
NS_STEPS = 5


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives: its buffer and its [offset, offset + size) range there."""

    name: str
    shape: tuple[int, ...]
    group: str
    offset: int
    size: int


@dataclass(frozen=True)
class Run:
    """`count` matrices of one shape side by side in the Muon buffer from `offset` (each `size`
    long): orthogonalised as one batch, read as a view of the buffer."""

    shape: tuple[int, ...]
    offset: int
    count: int
    size: int


def _group(name: str, p: mx.array, muon: bool) -> str:
    if p.ndim < 2:
        return "plain"
    return "muon" if muon and name.startswith("h.") else "decay"


def orthogonalise(x: mx.array) -> mx.array:
    """The nearest semi-orthogonal matrices to a stack of matrices (..., rows, cols), roughly (Muon's
    Newton-Schulz iteration, in x's dtype), each scaled by sqrt(max(1, rows / cols)) as `optim.Muon`
    scales its step. Each iteration is three matrix products whose sums are the products' epilogues
    (`mx.addmm`): no elementwise passes over the matrices between them."""
    a, b, c = NS_COEFFICIENTS
    rows, cols = x.shape[-2:]
    if rows > cols:
        x = x.swapaxes(-1, -2)
    x = x * mx.rsqrt(mx.sum(mx.square(x.astype(mx.float32)), axis=(-2, -1), keepdims=True) + 1e-14).astype(x.dtype)
    for _ in range(NS_STEPS):
        s = x @ x.swapaxes(-1, -2)
        x = mx.addmm(x, mx.addmm(s, s, s, alpha=c, beta=b), x, beta=a)  # a x + (b s + c s s) x
    if rows > cols:
        x = x.swapaxes(-1, -2)
    return x * max(1.0, rows / cols) ** 0.5


def _muon_update(p, m, g, scale, decay, lr, runs: list[Run], dtype: mx.Dtype):
    """One Muon step over the flat buffer of the blocks' matrices: Nesterov momentum, then the
    update orthogonalised, each run of same-shaped matrices as one batch (a view of the buffer, in
    `dtype`), then decoupled decay and the step."""
    mu = MUON_MOMENTUM
    g = g.astype(mx.float32) * scale
    m = mu * m + (1 - mu) * g
    u = ((1 - mu) * g + mu * m).astype(dtype)
    parts = [orthogonalise(u[r.offset:r.offset + r.count * r.size].reshape(r.count, *r.shape)).reshape(-1)
             for r in runs]
    pad = p.size - sum(r.count * r.size for r in runs)
    if pad:
        parts.append(mx.zeros((pad,), dtype))
    return p * decay - lr * mx.concatenate(parts).astype(mx.float32), m


@partial(mx.compile, shapeless=True)
def _update(p, m, v, g, scale, decay, c1, c2):
    """One AdamW step over a flat buffer, as `optim.AdamW` with bias correction computes it."""
    b1, b2 = BETAS
    g = g.astype(mx.float32) * scale
    p = p * decay
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * mx.square(g)
    return p - (c1 * m) / (mx.sqrt(v) * c2 + EPS), m, v


@partial(mx.compile, shapeless=True)
def _update_and_cast(p, m, v, g, scale, decay, c1, c2, like):
    """`_update`, and the new weights in `like`'s dtype, in one kernel."""
    p, m, v = _update(p, m, v, g, scale, decay, c1, c2)
    return p, m, v, p.astype(like.dtype)


class FlatAdamW:
    """AdamW with decoupled weight decay on matrices, GPT-2's betas and bias correction.

    `state` holds every array a step reads and writes (weights, moments, step, learning rate):
    pass it as `inputs` and `outputs` of `mx.compile`.
    """

    def __init__(self, params: dict, learning_rate: float, weight_decay: float,
                 compute_dtype: mx.Dtype = mx.float32, muon_lr: float | None = None):
        self.weight_decay = weight_decay
        self.compute_dtype = compute_dtype
        # Muon's rate follows AdamW's schedule, this many times larger (None: no Muon)
        self.muon_ratio = None if muon_lr is None else (muon_lr / learning_rate if learning_rate else 0.0)
        self.slots: list[Slot] = []
        ends = dict.fromkeys(GROUPS, 0)
        leaves = tree_flatten(params)
        for name, p in _muon_by_shape(leaves, muon_lr is not None):
            g = _group(name, p, muon_lr is not None)
            self.slots.append(Slot(name, tuple(p.shape), g, ends[g], p.size))
            ends[g] += p.size
        self.muon_runs = _runs([s for s in self.slots if s.group == "muon"])
        self.sizes = {g: -(-n // ROW) * ROW for g, n in ends.items() if n}  # whole rows
        self.state = {
            "params": self._pack(dict(leaves), mx.float32),
            "m": {g: mx.zeros((n,), mx.float32) for g, n in self.sizes.items()},
            "v": {g: mx.zeros((n,), mx.float32) for g, n in self.sizes.items() if g != "muon"},
            "step": mx.array(0, mx.uint64),
            "learning_rate": mx.array(learning_rate, mx.float32),
        }
        self._cast()

    # ------------------------------------------------------------ layout

    def _pack(self, leaves: dict, dtype: mx.Dtype, reduce=None, buckets: int = 1) -> dict[str, mx.array]:
        """One flat array per buffer from per-parameter arrays (a missing one counts as zeros).

        `reduce` (an all-reduce) is applied to each of `buckets` contiguous pieces of a buffer before
        they are joined: with one bucket, to the whole buffer, with no extra copy."""
        out = {}
        for g, n in self.sizes.items():
            slots = [s for s in self.slots if s.group == g]
            parts = [None if (a := leaves.get(s.name)) is None else a.reshape(-1).astype(dtype) for s in slots]
            widths = [s.size for s in slots]
            if n > (used := sum(widths)):  # the padding to whole rows
                parts.append(None)
                widths.append(n - used)
            if reduce is None:
                out[g] = joined(parts, widths, dtype)
            else:
                pieces = [reduce(joined(parts[i:j], widths[i:j], dtype)) for i, j in _split(widths, buckets)]
                out[g] = pieces[0] if len(pieces) == 1 else mx.concatenate(pieces)
        return out

    def _unpack(self, flat: dict[str, mx.array]) -> dict:
        return tree_unflatten([(s.name, flat[s.group][s.offset:s.offset + s.size].reshape(s.shape))
                               for s in self.slots])

    # ------------------------------------------------------------ weights

    @property
    def learning_rate(self) -> mx.array:
        return self.state["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.state["learning_rate"] = mx.array(value, mx.float32)

    def parameters(self) -> dict:
        """The float32 master weights as the model's parameter tree (views of the buffers)."""
        return self._unpack(self.state["params"])

    def _cast(self) -> None:
        """The compute-dtype copies of the weights (none when computing in float32)."""
        if self.compute_dtype != mx.float32:
            self.state["compute"] = {g: a.astype(self.compute_dtype) for g, a in self.state["params"].items()}

    def compute_views(self) -> dict:
        """The weights as the model reads them in a step: views of the compute-dtype copies."""
        return self._unpack(self.state.get("compute", self.state["params"]))

    def pack_gradients(self, grads: dict, dtype: mx.Dtype, reduce=None, buckets: int = 1) -> dict[str, mx.array]:
        """The gradient tree as one flat array per buffer, in `dtype`, each piece passed through
        `reduce` (see `_pack`)."""
        return self._pack(dict(tree_flatten(grads)), dtype, reduce, buckets)

    # ------------------------------------------------------------ the step

    def clip_and_update(self, grads: dict[str, mx.array], max_norm: float) -> mx.array:
        """Clip the flat gradients to `max_norm` (0: no clipping) and take one AdamW step.
        Returns the gradient's global norm before clipping."""
        norm = global_norm(grads)
        scale = mx.minimum(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else mx.array(1.0)
        st = self.state
        step = st["step"] + 1
        lr = st["learning_rate"]
        b1, b2 = BETAS
        c1 = lr / (1 - b1**step)
        c2 = mx.rsqrt(1 - b2**step)
        decay = {"decay": 1 - lr * self.weight_decay, "plain": mx.array(1.0)}
        for g in self.sizes:
            if g == "muon":
                self._muon_step(grads[g], scale, lr * self.muon_ratio)
                continue
            args = (st["params"][g], st["m"][g], st["v"][g], grads[g], scale, decay[g], c1, c2)
            if "compute" in st:
                st["params"][g], st["m"][g], st["v"][g], st["compute"][g] = _update_and_cast(*args, st["compute"][g])
            else:
                st["params"][g], st["m"][g], st["v"][g] = _update(*args)
        st["step"] = step
        return norm

    def _muon_step(self, grad: mx.array, scale: mx.array, lr: mx.array) -> None:
        st = self.state
        st["params"]["muon"], st["m"]["muon"] = _muon_update(
            st["params"]["muon"], st["m"]["muon"], grad, scale, 1 - lr * self.weight_decay, lr, self.muon_runs,
            self.compute_dtype)
        if "compute" in st:
            st["compute"]["muon"] = st["params"]["muon"].astype(self.compute_dtype)

    # ------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        """The optimizer state in `optim.AdamW`'s per-parameter layout."""
        moments = [(f"{s.name}.{k}", self.state[k][s.group][s.offset:s.offset + s.size].reshape(s.shape))
                   for s in self.slots for k in ("m", "v") if s.group in self.state[k]]
        return tree_unflatten(moments) | {"step": self.state["step"], "learning_rate": self.state["learning_rate"]}

    def load(self, params: dict, optimizer_state: dict | None) -> None:
        """Weights (and, if given, `optim.AdamW`-layout moments and step) from a checkpoint."""
        self.state["params"] = self._pack(dict(tree_flatten(params)), mx.float32)
        self._cast()
        if optimizer_state:
            flat = dict(tree_flatten(optimizer_state))
            for k in ("m", "v"):
                packed = self._pack({s.name: flat.get(f"{s.name}.{k}") for s in self.slots
                                     if f"{s.name}.{k}" in flat}, mx.float32)
                self.state[k] = {g: a for g, a in packed.items() if g in self.state[k]}
            if "step" in flat:
                self.state["step"] = mx.array(flat["step"]).astype(mx.uint64)


def _muon_by_shape(leaves: list, muon: bool) -> list:
    """The parameters in buffer order: Muon's matrices grouped by shape (first seen first), so that
    the matrices of one shape are one contiguous run; the rest as the tree gives them."""
    if not muon:
        return leaves
    shapes = list(dict.fromkeys(tuple(p.shape) for name, p in leaves if _group(name, p, True) == "muon"))
    return sorted(leaves, key=lambda kv: shapes.index(tuple(kv[1].shape)) if _group(*kv, True) == "muon" else -1)


def _runs(slots: list[Slot]) -> list[Run]:
    """The Muon buffer's runs of same-shaped matrices, in buffer order."""
    runs = [list(same) for _, same in groupby(slots, key=lambda s: s.shape)]
    return [Run(same[0].shape, same[0].offset, len(same), same[0].size) for same in runs]


def _split(sizes: list[int], buckets: int) -> list[tuple[int, int]]:
    """Parts of these sizes in at most `buckets` contiguous runs of roughly equal size, as [i, j) ranges."""
    target = sum(sizes) / max(buckets, 1)
    runs, start, size = [], 0, 0
    for i, n in enumerate(sizes):
        size += n
        if size >= target * (len(runs) + 1) and len(runs) < buckets - 1:
            runs.append((start, i + 1))
            start = i + 1
    return runs + [(start, len(sizes))] if start < len(sizes) else runs


def global_norm(flat_grads: dict[str, mx.array]) -> mx.array:
    """The L2 norm of all flat gradients, accumulated in float32.

    Each buffer's sum of squares is a batch of (1, ROW) @ (ROW, 1) products, one per row (no
    squared copy of the gradient), then a float32 sum of the row results.
    """
    total = mx.array(0.0, mx.float32)
    for g in flat_grads.values():
        total = total + (g.reshape(-1, 1, ROW) @ g.reshape(-1, ROW, 1)).astype(mx.float32).sum()
    return mx.sqrt(total)


class MatrixDecayAdamW(optim.AdamW):
    """`optim.AdamW` deciding decay per tensor as `FlatAdamW` does: matrices only."""

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if parameter.ndim < 2:
            return optim.Adam.apply_single(self, gradient, parameter, state)
        return super().apply_single(gradient, parameter, state)


def reference_adamw(learning_rate: float, weight_decay: float) -> optim.AdamW:
    """MLX's per-tensor AdamW configured as `FlatAdamW`: the definition it must match (tests), and
    the optimizer acm used before (benchmarks)."""
    return MatrixDecayAdamW(learning_rate=learning_rate, betas=list(BETAS), eps=EPS, weight_decay=weight_decay,
                            bias_correction=True)
