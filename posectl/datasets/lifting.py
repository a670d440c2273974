"""In-memory tensors for 2D->3D lifting: normalised inputs, root-relative targets, sequence windows.

Conventions (VideoPose3D / SemGCN / PoseAug): 2D is screen-normalised by the image width to
[-1, 1]; 3D is camera-frame, in metres, relative to the root joint (root set to 0).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from posectl.core.camera import normalize_screen
from posectl.core.skeleton import Layout
from posectl.datasets.store import PoseArrays, arrays_from_batch


class LiftingData:
    def __init__(self, arrays: PoseArrays, layout: Layout, keypoints: str | None = None,
                 sample_rows: int | None = None, first_row: int = 0, ordered: bool = False, read_stride: int = 1):
        self.keypoints = keypoints          # the 2D source loaded (gt, cpn, ...), for protocol strings
        self.sample_rows = sample_rows      # batches() draws from the first rows only (equal steps per worker)
        self.first_row = first_row          # ... starting at this row (rows before it are context, see StreamedSplit)
        self.read_stride = read_stride      # the rows are already every n-th frame (train_stride pushed into the read)
        # group rows by sequence, in time (`ordered`: they already are, each sequence's rows together)
        a = arrays if ordered else arrays.take(arrays.sequence_order())
        self.arrays = a
        self.layout = layout
        wh = a.image_size.astype(np.float32)
        self.inputs = torch.from_numpy(
            normalize_screen(a.keypoints_2d, wh[:, 0], wh[:, 1]).astype(np.float32))
        root = a.joints_3d[:, layout.root: layout.root + 1]
        self.targets = torch.from_numpy((a.joints_3d - root).astype(np.float32))
        seq = a.sequence_ids
        starts = np.r_[0, np.flatnonzero(np.diff(seq)) + 1]
        ends = np.r_[starts[1:], len(seq)] - 1
        counts = ends - starts + 1
        self.seq_start = torch.from_numpy(np.repeat(starts, counts))
        self.seq_end = torch.from_numpy(np.repeat(ends, counts))
        self._placed: dict[str, tuple[str, object]] = {}

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def actions(self) -> np.ndarray:
        return self.arrays.action

    @property
    def num_joints(self) -> int:
        return self.inputs.shape[1]

    def windows(self, idx: torch.Tensor, receptive_field: int, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """(B, receptive_field, J, 2) 2D windows centred on rows `idx`, edge-padded within a sequence."""
        src = self.inputs if inputs is None else inputs
        if receptive_field == 1:
            return src[idx].unsqueeze(1)
        return src[window_rows(idx, receptive_field, self.seq_start, self.seq_end)]

    def place(self, device: torch.device, fraction: float) -> str:
        """Where `fetch` takes batches for `device` from, decided once per device: "device" when inputs,
        targets and sequence bounds fit `fraction` of the device's memory (copied there once, batches
        indexed on it), "pinned" on a CUDA device otherwise (gathered into page-locked buffers, copied
        without blocking), "host" on another device (gathered on the CPU, copied), "cpu" on the CPU."""
        device = torch.device(device)
        key = str(device)
        if key not in self._placed:
            tensors = (self.inputs, self.targets, self.seq_start, self.seq_end)
            size = sum(t.numel() * t.element_size() for t in tensors)
            if device.type == "cpu":
                self._placed[key] = ("cpu", tensors)
            elif fraction > 0 and size <= fraction * device_memory(device):
                self._placed[key] = ("device", tuple(t.to(device) for t in tensors))
            elif device.type == "cuda":
                self._placed[key] = ("pinned", _PinnedStaging())
            else:
                self._placed[key] = ("host", tensors)
        return self._placed[key][0]

    def fetch(self, idx: torch.Tensor, device: torch.device, receptive_field: int | None = None,
              fraction: float = 0.25, target_windows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(2D input, root-relative 3D target) of rows `idx` (a CPU index tensor) on `device`: inputs
        (B, J, 2) for `receptive_field=None`, else (B, receptive_field, J, 2) windows, and the targets of
        the same windows with `target_windows`. See `place`."""
        kind = self.place(device, fraction)
        held = self._placed[str(torch.device(device))][1]
        if kind == "device":
            inputs, targets, start, end = held
            i = idx.to(device, non_blocking=True)
            if receptive_field is None:
                return inputs[i], targets[i]
            rows = window_rows(i, receptive_field, start, end)
            return inputs[rows], targets[rows if target_windows else i]
        rows = idx if receptive_field is None else window_rows(idx, receptive_field, self.seq_start, self.seq_end)
        trows = rows if target_windows else idx
        if kind == "pinned":
            return held.copy([(self.inputs, rows), (self.targets, trows)], device)
        x, y = self.inputs[rows], self.targets[trows]
        if kind == "host":
            x, y = x.to(device), y.to(device)
        return x, y

    def on_device(self, device: torch.device, **tables: torch.Tensor) -> "DeviceRows":
        """Per-row `tables` (e.g. inputs=self.inputs) and the sequence bounds copied to `device` once, for
        methods that gather and augment their batches there. Unlike `fetch`, not limited by a fraction of
        the device's memory: the tables are what every step reads."""
        return DeviceRows(self, device, tables)

    def parts(self, generator: torch.Generator | None = None, multiple_of: int = 1) -> Iterator["LiftingData"]:
        """The split as the pieces an epoch trains on: in memory, the split itself (see StreamedSplit)."""
        yield self

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                stride: int = 1) -> Iterator[torch.Tensor]:
        end = len(self) if self.sample_rows is None else min(self.first_row + self.sample_rows, len(self))
        idx = torch.arange(self.first_row, end, max(1, stride // self.read_stride))
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for start, end in batch_bounds(len(idx), batch_size):
            yield idx[start:end]


class StreamedSplit:
    """A worker's training split read piece by piece from a stream of Arrow batches (a Ray Data dataset or
    iterator: anything with `iter_batches`), for a split larger than memory (orchestrator/spec.py decides).
    Each piece is a LiftingData of `chunk` training rows, which a method draws in shuffled batches (a
    windowed shuffle that the method's generator fixes), with `context` rows of the stream on each side so
    that a temporal window at a piece's edge sees its real neighbours. An epoch stops after `rows` rows, the
    same on every rank (equal steps). The stream's rows are in sequence order (shards are written so)."""

    def __init__(self, source, layout: Layout, keypoints: str, rows: int, chunk: int, context: int = 0,
                 read_stride: int = 1, where: str = "train split", read_batch: int = 16384):
        self.source, self.layout, self.keypoints = source, layout, keypoints
        self.rows, self.chunk, self.context, self.read_stride = rows, chunk, context, read_stride
        self.where, self.read_batch = where, read_batch

    def __len__(self) -> int:
        return self.rows

    @property
    def num_joints(self) -> int:
        return self.layout.num_joints

    def parts(self, generator: torch.Generator | None = None, multiple_of: int = 1) -> Iterator[LiftingData]:
        """One pass over the stream in pieces of `chunk` rows rounded down to a multiple of `multiple_of`
        (a worker's batch: then every piece but the last yields whole batches, on every rank alike)."""
        chunk = max(multiple_of, self.chunk // multiple_of * multiple_of)
        ctx, served, left = self.context, 0, None
        pending: list[PoseArrays] = []
        held = 0

        def piece(body: PoseArrays, n: int) -> LiftingData:
            lo = len(left) if left is not None else 0
            rows = PoseArrays.concat([left, body]) if left is not None else body
            return LiftingData(rows, self.layout, keypoints=self.keypoints, sample_rows=n, first_row=lo,
                               ordered=True, read_stride=self.read_stride)

        for batch in self.source.iter_batches(batch_size=self.read_batch, batch_format="pyarrow"):
            pending.append(arrays_from_batch({c: batch.column(c) for c in batch.column_names}, self.keypoints,
                                             self.layout.num_joints, where=self.where))
            held += len(pending[-1])
            while served < self.rows and held >= min(chunk, self.rows - served) + ctx:
                rows = PoseArrays.concat(pending)
                n = min(chunk, self.rows - served)
                yield piece(rows.take(slice(0, n + ctx)), n)
                served += n
                left = rows.take(slice(max(0, n - ctx), n)) if ctx else None
                pending = [rows.take(slice(n, None))]
                held = len(pending[0])
            if served >= self.rows:
                return
        if held and served < self.rows:          # the stream ended early: the rest, without right context
            rows = PoseArrays.concat(pending)
            yield piece(rows, min(len(rows), self.rows - served))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive batches over n items. A trailing batch of one item joins the batch
    before it: batch norm cannot train on a single sample, and no item is dropped."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def window_rows(idx: torch.Tensor, receptive_field: int, seq_start: torch.Tensor, seq_end: torch.Tensor) -> torch.Tensor:
    """(B, receptive_field) row numbers of the windows centred on `idx`, clamped to each row's sequence
    (edge padding, as VideoPose3D); on the device of `idx`."""
    half = receptive_field // 2
    rows = idx[:, None] + torch.arange(-half, half + 1, device=idx.device)[None, :]
    return torch.maximum(torch.minimum(rows, seq_end[idx, None]), seq_start[idx, None])


class DeviceRows:
    """Per-row tables of a split on one device, with windows taken there (LiftingData.on_device)."""

    def __init__(self, data: LiftingData, device: torch.device, tables: dict[str, torch.Tensor]):
        self.device = torch.device(device)
        self.tables = {k: v.to(self.device) for k, v in tables.items()}
        self.start, self.end = data.seq_start.to(self.device), data.seq_end.to(self.device)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tables[name]

    def windows(self, table: str | torch.Tensor, idx: torch.Tensor, receptive_field: int) -> torch.Tensor:
        """(B, receptive_field, ...) windows of a table (a name, or any per-row tensor on the device)
        centred on rows `idx` (on the device), edge-padded within each sequence, as LiftingData.windows."""
        src = self.tables[table] if isinstance(table, str) else table
        if receptive_field == 1:
            return src[idx].unsqueeze(1)
        return src[window_rows(idx, receptive_field, self.start, self.end)]


def device_memory(device: torch.device) -> int:
    """Bytes of memory of an accelerator (0 where unknown: then nothing is placed on it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return 0


class _PinnedStaging:
    """Two page-locked host buffers used in turn: a batch is gathered (index_select) straight into one
    and copied to the device without blocking; before a buffer is refilled, the host waits for the copy
    that last read it (a CUDA event), so a batch is never overwritten in flight."""

    def __init__(self):
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.events: list = [None, None]
        self.turn = 0

    def copy(self, parts: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> list[torch.Tensor]:
        k, self.turn = self.turn, 1 - self.turn
        if self.events[k] is not None:
            self.events[k].synchronize()
        sizes = [rows.numel() * src[0].numel() for src, rows in parts]
        buf = self.buffers[k]
        if buf is None or buf.numel() < sum(sizes):
            buf = self.buffers[k] = torch.empty(2 * sum(sizes), dtype=parts[0][0].dtype, pin_memory=True)
        out, off = [], 0
        for (src, rows), n in zip(parts, sizes):
            dst = buf[off: off + n].view(rows.numel(), *src.shape[1:])
            torch.index_select(src, 0, rows.reshape(-1), out=dst)
            out.append(dst.view(*rows.shape, *src.shape[1:]).to(device, non_blocking=True))
            off += n
        self.events[k] = torch.cuda.Event()
        self.events[k].record()
        return out
