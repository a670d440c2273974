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
from posectl.datasets.store import PoseArrays


class LiftingData:
    def __init__(self, arrays: PoseArrays, layout: Layout, keypoints: str | None = None,
                 sample_rows: int | None = None):
        self.keypoints = keypoints          # the 2D source loaded (gt, cpn, ...), for protocol strings
        self.sample_rows = sample_rows      # batches() draws from the first rows only (equal steps per worker)
        a = arrays.take(arrays.sequence_order())           # group rows by sequence, in time
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
        half = receptive_field // 2
        offs = torch.arange(-half, half + 1)
        rows = idx[:, None] + offs[None, :]
        rows = torch.maximum(torch.minimum(rows, self.seq_end[idx, None]), self.seq_start[idx, None])
        return src[rows]

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                stride: int = 1) -> Iterator[torch.Tensor]:
        idx = torch.arange(0, len(self) if self.sample_rows is None else min(self.sample_rows, len(self)), stride)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for start, end in batch_bounds(len(idx), batch_size):
            yield idx[start:end]


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive batches over n items. A trailing batch of one item joins the batch
    before it: batch norm cannot train on a single sample, and no item is dropped."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds
