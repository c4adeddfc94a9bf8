"""Train many small regressors as ONE batched computation: all seeds x folds on stacked weights.

Why: the old kit trained 45 tiny MLPs one after another; each step is so small that per-step
overhead (Python, autograd, optimizer bookkeeping, DataLoader collation) dominated. Here every model
is a slice of stacked tensors [M, ...] and one step runs all of them with a few `baddbmm` calls (the
network is `kit.train.model`'s, in its stacked form), a hand-written backward pass (`stacked_gradients`:
no autograd, measured ~20% faster; the tests check it against autograd on every run) and one fused
Adam kernel over all models (`kit.train.kernels`, with public fallbacks); a background thread draws
the next batches and dropout masks (numpy, GIL released) while torch computes.

Each model still gets exactly the training it would get alone:
  * its own generator (numpy SFC64 seeded from its own key) draws its init, its per-epoch shuffle and
    its dropout masks, so model k never depends on which other models share the batch;
  * it walks its own rows in its own batches (the last one partial, like a DataLoader without
    drop_last); rows beyond a model's batch are padding with zero loss weight;
  * a model whose epoch has fewer batches than the longest one is *inactive* on the extra steps: its
    Adam moments, step count and weights do not move (a masked step), as if the step never happened.

Dropout keep-masks come from 16-bit uniforms: a unit is dropped when u < round(p * 65536), and kept
units are scaled by 1 / (1 - p_eff) with p_eff = round(p * 65536) / 65536 (0.1 -> 0.10001), so the
layer stays exactly unbiased.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from kit.core import proc
from kit.core.errors import BadInput, WorkFailed
from kit.train import kernels
from kit.train.config import TrainConfig
from kit.train.model import (
    HIDDEN_LAYERS,
    N_LAYERS,
    PARAMS,
    Weights,
    init_params,
    param_shapes,
    stacked_forward,
)

STEP_CHUNK = 64  # steps whose batches/masks are drawn at once (bounds memory on big corpora)


@contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Fixed thread count + deterministic algorithms for the duration of training."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def model_rng(key: Sequence[int]) -> np.random.Generator:
    """Each model's own generator: everything random about model k flows from its key alone."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(list(key))))


@dataclass
class Job:
    """One model to train: rows of a shared data block and the key of its own generator."""

    block: int  # index into the blocks passed to train_models
    key: tuple[int, ...]


class StackedMLP:
    """M models' parameters in one model-major buffer P [M, n_params] plus Adam state."""

    def __init__(self, inits: list[dict[str, np.ndarray]], n_in: int, h: int) -> None:
        self.M, self.n_in, self.h = len(inits), n_in, h
        self.shapes = param_shapes(n_in, h)
        self.sizes = {k: a * b for k, (a, b) in self.shapes.items()}
        self.n_params = sum(self.sizes.values())
        P = np.concatenate([np.stack([i[k].reshape(-1) for i in inits]) for k in PARAMS], axis=1)
        self.P = torch.from_numpy(np.ascontiguousarray(P, dtype=np.float32))
        self.m1 = torch.zeros_like(self.P)
        self.m2 = torch.zeros_like(self.P)
        self.view = self._views(self.P)

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for k in PARAMS:
            out[k] = flat[:, offset : offset + self.sizes[k]].view(self.M, *self.shapes[k])
            offset += self.sizes[k]
        return out

    @classmethod
    def concat(cls, nets: list[StackedMLP]) -> StackedMLP:
        """One stack of all models of several stacks, in order (trained weights only)."""
        out = cls.__new__(cls)
        out.M, out.n_in, out.h = sum(n.M for n in nets), nets[0].n_in, nets[0].h
        out.shapes, out.sizes, out.n_params = nets[0].shapes, nets[0].sizes, nets[0].n_params
        out.P = torch.cat([n.P for n in nets])
        out.m1 = torch.cat([n.m1 for n in nets])
        out.m2 = torch.cat([n.m2 for n in nets])
        out.view = out._views(out.P)
        return out

    def weights(self, m: int) -> Weights:
        return Weights({k: self.view[k][m].numpy().copy() for k in PARAMS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval forward (no dropout): x [M, B, n_in] -> [M, B]."""
        return stacked_forward(self.view, x)[0].squeeze(-1)


def stacked_gradients(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, masks: list[torch.Tensor],
                      gw: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of sum(gw / 2 * (out - y)^2) w.r.t. every parameter, in PARAMS order, written out by hand.

    `gw` is 2 / len(batch) for real rows and 0 for padding, so this is each model's mean squared error
    gradient. The same numbers autograd gives (tests/test_train.py checks it every run), ~20% faster.
    """
    out, zs, acts = stacked_forward(p, x, masks)
    g = (out - y).mul_(gw)  # d loss / d out: [M, B, 1]
    grads: dict[str, torch.Tensor] = {}
    for i in range(N_LAYERS, 0, -1):  # layer i: z_i = a_{i-1} @ W_i + b_i, with a_0 = x
        a_prev = acts[i - 2] if i > 1 else x
        grads[f"W{i}"] = torch.bmm(a_prev.transpose(1, 2), g)
        grads[f"b{i}"] = g.sum(1)
        if i == 1:
            break
        w_t = p[f"W{i}"].transpose(1, 2)
        # a layer with one output: the product over an inner dimension of 1 is a broadcast
        back = g * w_t * masks[i - 2] if w_t.shape[1] == 1 else torch.bmm(g, w_t).mul_(masks[i - 2])
        g = kernels.gelu_backward(back, zs[i - 2])
    return [grads[k] for k in PARAMS]


class Trainer:
    """The batched training loop over jobs that share data blocks."""

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray]], jobs: list[Job], config: TrainConfig) -> None:
        self.config, self.jobs = config, jobs
        self.M = len(jobs)
        self.n_in = blocks[0][0].shape[1]
        B = config.batch_size
        # All blocks in one flat [rows, n_in + 1] tensor (last column: target), one offset per block.
        used = sorted({j.block for j in jobs})  # only the blocks this group's jobs train on
        flat = np.concatenate([np.column_stack(blocks[b]) for b in used]).astype(np.float32)
        self.data = torch.from_numpy(np.ascontiguousarray(flat))
        starts = dict(zip(used, np.cumsum([0] + [len(blocks[b][0]) for b in used])[:-1], strict=True))
        self.offset = np.array([starts[j.block] for j in jobs], dtype=np.int64)
        self.n = np.array([len(blocks[j.block][0]) for j in jobs], dtype=np.int64)
        self.steps = -(-self.n // B)  # batches per epoch per model (last one partial)
        self.S = int(self.steps.max())
        self.rngs = [model_rng(j.key) for j in jobs]
        inits = [init_params(r, self.n_in, config.hidden) for r in self.rngs]
        self.net = StackedMLP(inits, self.n_in, config.hidden)
        # Loss weight per (step, model, row): 1/len(batch) for real rows, 0 for padding. Same every epoch.
        w = np.zeros((self.S, self.M, B), dtype=np.float32)
        for m in range(self.M):
            sizes = np.full(self.steps[m], B)
            sizes[-1] = self.n[m] - B * (self.steps[m] - 1)
            for s, size in enumerate(sizes):
                w[s, m, :size] = 2.0 / size  # d(mean squared error)/d(pred) = 2 (pred - y) / size
        self.grad_weight = torch.from_numpy(w).unsqueeze(-1)
        self.drop_threshold = round(config.dropout * 65536)
        p_eff = self.drop_threshold / 65536
        self.keep_scale = np.float32(1.0 / (1.0 - p_eff))
        self.mask_width = HIDDEN_LAYERS * config.hidden  # one keep-mask per hidden unit of every hidden layer
        self.u64_per_step = -(-(B * self.mask_width * 2) // 8)  # 16-bit uniforms, whole u64 words
        self.epoch = 0
        # Adam: one fused kernel over per-model rows (model-major buffers keep each row contiguous);
        # each model has its own step count, so bias correction follows its own number of steps.
        net = self.net
        self.G = torch.empty_like(net.P)
        self.rows = (list(net.P.unbind(0)), list(self.G.unbind(0)), list(net.m1.unbind(0)), list(net.m2.unbind(0)))
        self.step_count = torch.zeros(self.M, dtype=torch.float32)  # one op increments every model's count
        self.step_counts = list(self.step_count.unbind(0))
        self.min_steps = int(self.steps.min())
        self.fused = kernels.FUSED_ADAM

    def active_at(self, s: int) -> torch.Tensor:
        """1.0 for models that have a batch at step s of the epoch, else 0.0."""
        return torch.from_numpy((s < self.steps).astype(np.float32))

    # -- per-epoch randomness, drawn model by model from each model's own generator ----------------
    def _draw_epoch(self) -> tuple[list[np.ndarray], list[np.random.Generator]]:
        perms = [r.permutation(int(n)) for r, n in zip(self.rngs, self.n, strict=True)]
        return perms, self.rngs

    def _chunk(self, perms: list[np.ndarray], s0: int, s1: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, W = self.config.batch_size, self.mask_width
        idx = np.empty((s1 - s0, self.M, B), dtype=np.int64)
        masks = np.zeros((s1 - s0, self.M, B, W), dtype=np.float32)
        for m in range(self.M):
            rows = np.full((s1 - s0) * B, self.offset[m], dtype=np.int64)  # padding: a real row, weight 0
            lo, hi = s0 * B, min(s1 * B, int(self.n[m]))
            if lo < hi:
                rows[: hi - lo] = perms[m][lo:hi] + self.offset[m]
            idx[:, m, :] = rows.reshape(s1 - s0, B)
            active = max(0, min(s1, int(self.steps[m])) - s0)
            if active and self.config.dropout > 0:
                raw = self.rngs[m].bit_generator.random_raw(active * self.u64_per_step)
                u16 = raw.view(np.uint16).reshape(active, -1)[:, : B * W].reshape(active, B, W)
                np.multiply(u16 >= self.drop_threshold, self.keep_scale, out=masks[:active, m])
            elif active:
                masks[:active, m] = 1.0
        return torch.from_numpy(idx.reshape(s1 - s0, -1)), torch.from_numpy(masks)

    def _adam_coefficients(self, s: int) -> tuple[torch.Tensor, ...]:
        """Per-model Adam scalars for step s of this epoch; inactive models get zeros (no update)."""
        c = self.config
        active = s < self.steps
        t = (self.epoch * self.steps + s + 1).astype(np.float64)
        lr_t = np.where(active, c.lr / (1.0 - c.beta1**t), 0.0)
        inv_bc2 = 1.0 / np.sqrt(1.0 - c.beta2**t)
        c1 = np.where(active, 1.0 - c.beta1, 0.0)
        c2 = np.where(active, 1.0 - c.beta2, 0.0)
        return tuple(torch.from_numpy(a.astype(np.float32)).reshape(-1, 1) for a in (lr_t, inv_bc2, c1, c2))

    def _adam(self, s: int) -> None:
        """torch.optim.Adam semantics (L2 weight decay added to the gradient) for the models active at step s."""
        c, net, G = self.config, self.net, self.G
        if not self.fused:  # portable path: the same update as vectorised tensor ops with per-model scalars
            lr_t, inv_bc2, c1, c2 = self._adam_coefficients(s)
            if c.weight_decay:
                G.add_(net.P, alpha=c.weight_decay)
            net.m1.lerp_(G, c1)
            net.m2.lerp_(G.square(), c2)
            denom = net.m2.sqrt().mul_(inv_bc2).add_(c.eps)
            net.P.sub_(net.m1.div(denom).mul_(lr_t))
            return
        if s < self.min_steps:  # every model active (all but the last few steps of an epoch)
            self.step_count.add_(1.0)
            lists, counts = self.rows, self.step_counts
        else:  # a masked step: only models that still have batches this epoch move
            active = [m for m in range(self.M) if s < self.steps[m]]
            self.step_count.add_(self.active_at(s))
            lists = tuple([rows[m] for m in active] for rows in self.rows)
            counts = [self.step_counts[m] for m in active]
        kernels.fused_adam(*lists, counts, lr=c.lr, beta1=c.beta1, beta2=c.beta2, weight_decay=c.weight_decay,
                           eps=c.eps)

    def _step(self, s: int, idx: torch.Tensor, mask: torch.Tensor, gw: torch.Tensor) -> None:
        M, H = self.M, self.config.hidden
        batch = self.data.index_select(0, idx).view(M, -1, self.n_in + 1)
        x, y = batch[..., : self.n_in], batch[..., self.n_in :]
        masks = [mask[..., k * H : (k + 1) * H] for k in range(HIDDEN_LAYERS)]
        grads = stacked_gradients(self.net.view, x, y, masks, gw)
        torch.cat([g.reshape(M, -1) for g in grads], dim=1, out=self.G)
        self._adam(s)

    def batches(self, epochs: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(epoch, first step, batch indices, dropout masks) chunks, in generator-stream order."""
        for epoch in range(epochs):
            perms, _ = self._draw_epoch()
            for s0 in range(0, self.S, STEP_CHUNK):
                idx, masks = self._chunk(perms, s0, min(self.S, s0 + STEP_CHUNK))
                yield epoch, s0, idx, masks

    def run_chunk(self, s0: int, idx: torch.Tensor, masks: torch.Tensor) -> None:
        for k in range(len(idx)):
            self._step(s0 + k, idx[k], masks[k], self.grad_weight[s0 + k])

    def run_epoch(self) -> None:
        """One epoch, drawing randomness inline (the simple path; train_models prefetches instead)."""
        perms, _ = self._draw_epoch()
        for s0 in range(0, self.S, STEP_CHUNK):
            idx, masks = self._chunk(perms, s0, min(self.S, s0 + STEP_CHUNK))
            self.run_chunk(s0, idx, masks)
        self.epoch += 1

    def diverged(self) -> list[int]:
        finite = torch.isfinite(self.net.P).all(dim=1)
        return [int(m) for m in torch.nonzero(~finite).flatten()]


# ---- memory: seeds x folds x rows and the batch size decide it; refuse before allocating, not after -------

MEMORY_SHARE = 0.8  # of this box's memory, the default limit (`--max-memory` overrides it)
PREFETCH_DEPTH = 2  # chunks drawn ahead by `_prefetch` (plus the one in use and the one being drawn)


def physical_memory() -> int | None:
    """This box's memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_limit() -> int:
    total = physical_memory()
    return int(total * MEMORY_SHARE) if total else 16 << 30


def estimate_memory(block_rows: Sequence[int], job_blocks: Sequence[int], n_in: int, config: TrainConfig) -> int:
    """Bytes a training of these jobs needs at its peak, roughly (within ~2x; it exists to stop a typo
    from asking for 20 GiB, not to budget tightly): the blocks' inputs (built once, copied into each
    worker group), and per model its loss weights and the prefetched batches + dropout masks."""
    groups = max(1, min(len(job_blocks), config.workers or default_workers()))
    B, W = config.batch_size, HIDDEN_LAYERS * config.hidden
    data = sum(block_rows) * (n_in + 1) * 4 * (3 + groups)
    steps = [-(-max(1, block_rows[b]) // B) for b in job_blocks]
    chunk = min(max(steps, default=1), STEP_CHUNK)
    per_model = sum(s * B * 4 for s in steps) + len(job_blocks) * (PREFETCH_DEPTH + 2) * chunk * B * (8 + 4 * W)
    return data + per_model


def check_memory(block_rows: Sequence[int], job_blocks: Sequence[int], n_in: int, config: TrainConfig,
                 max_memory: int | None = None) -> None:
    """Bad input, before anything is allocated, when training would need more than the limit."""
    need = estimate_memory(block_rows, job_blocks, n_in, config)
    limit = max_memory if max_memory is not None else default_memory_limit()
    if need > limit:
        raise BadInput(
            f"training {len(job_blocks)} models ({len(block_rows)} data blocks, up to {max(block_rows, default=0)} rows "
            f"each, --batch-size {config.batch_size}) needs about {_gib(need)}, more than the limit {_gib(limit)}"
            + ("" if max_memory is not None else f" ({MEMORY_SHARE:.0%} of this box's memory)"),
            hint="use fewer --seeds or a smaller --batch-size, or raise the limit with --max-memory SIZE (e.g. 64G)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def default_workers() -> int:
    """Worker threads when --workers is 0 (auto): one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def train_models(
    blocks: list[tuple[np.ndarray, np.ndarray]],
    jobs: list[Job],
    config: TrainConfig,
    *,
    names: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StackedMLP:
    """Train every job together; returns the stacked trained weights (eval with `predict`).

    `blocks` are (standardised inputs [n, n_in], target [n]) pairs shared by jobs; `progress` is an
    optional callable(epochs_done, epochs_total). The jobs are split into `config.workers` groups
    (0 = one per core), each a batched computation driven by its own Python thread (torch releases
    the GIL inside ops, so groups run on separate cores). A model's arithmetic does not depend on
    its group, so results are identical for any worker count. A model whose weights stop being
    finite is a training failure (exit 4) naming the model and epoch.
    """
    n_groups = max(1, min(len(jobs), config.workers or default_workers()))
    bounds = np.linspace(0, len(jobs), n_groups + 1).round().astype(int)
    groups = [(int(lo), jobs[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
    stop = _StopSignal()
    done = [0] * len(groups)
    lock = threading.Lock()

    def tick(g: int, epoch: int) -> None:
        with lock:
            before = min(done)
            done[g] = epoch
            if progress is not None and min(done) > before:
                progress(min(done), config.epochs)

    def work(g: int, offset: int, group: list[Job]) -> StackedMLP:
        with torch.no_grad():
            trainer = Trainer(blocks, group, config)
            chunks = _prefetch(trainer.batches(config.epochs))
            group_names = [names[offset + i] if names else f"model {offset + i}" for i in range(len(group))]
            try:
                _train_loop(trainer, chunks, config, group_names, lambda e: tick(g, e), stop)
            except (WorkFailed, _Stopped):
                raise  # a divergence already told the others where to stop
            except BaseException:
                stop.set()
                raise
            finally:
                chunks.close()
            return trainer.net

    with deterministic_torch(config.threads):
        if len(groups) == 1:
            return work(0, *groups[0])
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="train-group") as pool:
            futures = [pool.submit(work, g, offset, group) for g, (offset, group) in enumerate(groups)]
            try:
                proc.wait_all(futures)
            except BaseException:  # Ctrl-C / SIGTERM: stop every group at its next epoch, then leave
                stop.set()
                raise
        for f in futures:  # first failure in job order, so the message does not depend on timing
            if f.exception() is not None and not isinstance(f.exception(), _Stopped):
                raise f.exception()
        return StackedMLP.concat([f.result() for f in futures])


class _Stopped(Exception):
    """A group stopped early because another group failed."""


class _StopSignal:
    """Where the other groups stop when one fails. After a divergence at epoch e they still finish and check
    epoch e, so which models the error names (the first failing group in job order) does not depend on
    thread timing; anything else (Ctrl-C, a bug) stops them before their next epoch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.after: int | None = None  # the last epoch every group still runs; -1 = none

    def set(self, after_epoch: int = -1) -> None:
        with self._lock:
            self.after = after_epoch if self.after is None else min(self.after, after_epoch)

    def stops_before(self, epoch: int) -> bool:
        return self.after is not None and epoch > self.after


def _train_loop(trainer: Trainer, chunks: Iterator, config: TrainConfig, names: list[str],
                on_epoch: Callable[[int], None], stop: _StopSignal) -> None:
    """Epoch by epoch over prefetched chunks; a model whose weights stop being finite fails the run."""
    for epoch in range(config.epochs):
        if stop.stops_before(epoch):
            raise _Stopped()
        trainer.epoch = epoch
        for s0 in range(0, trainer.S, STEP_CHUNK):
            chunk_epoch, chunk_s0, idx, masks = next(chunks)
            assert (chunk_epoch, chunk_s0) == (epoch, s0)
            trainer.run_chunk(s0, idx, masks)
        bad = trainer.diverged()
        if bad:
            stop.set(epoch)
            raise WorkFailed(
                f"training diverged (weights became NaN/inf) at epoch {epoch + 1}: {', '.join(names[m] for m in bad)}",
                hint="lower --lr or check the corpus for extreme feature values",
            )
        on_epoch(epoch + 1)


def _prefetch(source: Iterator, depth: int = 2) -> Iterator:
    """Run a generator in a background thread, `depth` items ahead.

    Drawing shuffles and dropout masks is numpy work that releases the GIL, so on a second core it
    overlaps the torch step instead of adding to it. Order is unchanged, so results are too.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)

    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def predict(net: StackedMLP, inputs: list[np.ndarray], threads: int, chunk: int = 4096) -> list[np.ndarray]:
    """Eval-mode predictions of model m on inputs[m] (each [n_m, n_in]), all models at once."""
    out = [np.empty(len(x), dtype=np.float32) for x in inputs]
    longest = max((len(x) for x in inputs), default=0)
    with deterministic_torch(threads), torch.no_grad():
        for lo in range(0, longest, chunk):
            hi = lo + chunk
            width = min(hi, longest) - lo
            batch = np.zeros((len(inputs), width, net.n_in), dtype=np.float32)
            for m, x in enumerate(inputs):
                part = x[lo:hi]
                batch[m, : len(part)] = part
            pred = net.forward(torch.from_numpy(batch)).numpy()
            for m, x in enumerate(inputs):
                k = max(0, min(hi, len(x)) - lo)
                out[m][lo : lo + k] = pred[m, :k]
    return out
