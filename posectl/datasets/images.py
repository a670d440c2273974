"""A dataset's optional image column: decoding frames, and attaching image files to a dataset.

The column (posectl.datasets.store) holds each row's frame as encoded bytes (PNG/JPEG, `binary`) or a
path (`string`, relative to the dataset directory or absolute). Frames are decoded with Pillow when a
method reads them (L2D's detector), never at import. `attach_images` writes a new dataset whose rows
point at (or embed) the user's frames, e.g. the extracted Human3.6M videos.
"""
from __future__ import annotations

import io
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from posectl.datasets.store import IMAGE_COLUMN, DatasetWriter, PoseDataset
from posectl.errors import DataError

FIELDS = ("split", "subject", "action", "camera", "frame")


def decode(value) -> np.ndarray:
    """One frame (encoded bytes or a path) -> (H, W, 3) uint8 RGB; a one-line DataError if unreadable."""
    from PIL import Image, UnidentifiedImageError
    what = f"image {value}" if isinstance(value, str) else "embedded image"
    try:
        with Image.open(io.BytesIO(value) if isinstance(value, bytes) else value) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{what}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{what}: cannot be decoded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def crop_photos(batch: dict, res: int) -> dict:
    """Decode a batch of frames and resample each into its crop (core/render.py: crop_frames), as L2D's
    training step needs them; columns: image (bytes or path), w, h (frame size), cu, cv, size and r00..r11
    (the CropTransform). Runs wherever Context.map_batches sends it (Ray Data tasks in a Ray job)."""
    from posectl.core.render import CropTransform, crop_frames
    f32 = lambda k: torch.from_numpy(np.asarray(batch[k], dtype=np.float32))      # noqa: E731
    crop = CropTransform(torch.stack([f32("cu"), f32("cv")], -1), f32("size"),
                         torch.stack([f32("r00"), f32("r01"), f32("r10"), f32("r11")], -1).view(-1, 2, 2), res)
    frames = [torch.from_numpy(decode(v)).permute(2, 0, 1).float() / 255 for v in batch["image"]]
    try:
        images = crop_frames(frames, torch.stack([f32("w"), f32("h")], -1), crop)
    except ValueError as e:
        raise DataError(f"image column: {e}") from None
    return {"pixels": images.numpy()}


def crop_columns(images: np.ndarray, image_size: np.ndarray, crop) -> dict[str, np.ndarray]:
    """The columns crop_photos reads, for frames `images` (bytes or paths) and their CropTransform."""
    c, r = crop.centre.numpy(), crop.rot.reshape(-1, 4).numpy()
    return {"image": images, "w": image_size[:, 0], "h": image_size[:, 1], "cu": c[:, 0], "cv": c[:, 1],
            "size": crop.size.numpy(), **{k: r[:, i] for i, k in enumerate(("r00", "r01", "r10", "r11"))}}


EXAMPLE_PATTERN = "'{subject}/{action}.{camera}/{frame:06d}.jpg'"
# a row as the pattern sees it: split, subject, action and camera are strings, frame an integer
SAMPLE_ROW = {"split": "train", "subject": "S1", "action": "Walking 1", "camera": "54138969", "frame": 0}


def check_pattern(pattern: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise DataError(f"--pattern '{pattern}': {e}, e.g. {EXAMPLE_PATTERN}") from None
    unknown = [n for n in names if n.split(".")[0].split("[")[0] not in FIELDS]
    if unknown or not names:
        raise DataError(f"--pattern: use fields {', '.join('{' + f + '}' for f in FIELDS)}"
                        f"{'' if not unknown else f' (unknown: {unknown[0]})'}, e.g. {EXAMPLE_PATTERN}")
    try:                                  # format specs and conversions: '{subject:06d}' is refused here
        pattern.format(**SAMPLE_ROW)
    except IndexError:
        pass                              # '{subject[3]}' depends on the row's values: checked per row
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise DataError(_pattern_error(pattern, e)) from None


def format_pattern(pattern: str, row: dict) -> str:
    """`pattern` formatted with one row's fields; a format spec that does not fit a field is a DataError."""
    try:
        return pattern.format(**row)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise DataError(_pattern_error(pattern, e)) from None


def _pattern_error(pattern: str, e: Exception) -> str:
    return (f"--pattern '{pattern}': {e} (split, subject, action and camera are strings, frame an integer), "
            f"e.g. {EXAMPLE_PATTERN}")


def attach_images(src: str | Path, out: str | Path, pattern: str, root: str | Path | None = None,
                  embed: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Write a copy of dataset `src` at `out` with an image column: per row the file `root/pattern`
    (formatted with the row's split, subject, action, camera and frame). Every file must exist; the first
    frame of every sequence must have the row's image_size. `embed`: store the encoded bytes instead of
    the (absolute) path. Nothing is written at `out` unless every split succeeds."""
    from PIL import Image
    check_pattern(pattern)
    ds = PoseDataset(src, verify=True)
    base = Path(root).expanduser().resolve() if root else Path.cwd()
    say = progress or (lambda m: None)
    info = {**ds.manifest.get("info", {}), "images_from": str(base / pattern), "images_of": str(ds.path)}
    with DatasetWriter(out, ds.name, ds.manifest["joint_layout"], info=info, body_params=ds.body_params) as w:
        for split in ds.splits:
            t = ds.read_table(split)
            cols = {k: t.column(k).to_pylist() for k in FIELDS[1:]}
            size = t.column("image_size").to_pylist()
            paths = [base / format_pattern(pattern, {"split": split, **{k: cols[k][i] for k in cols}})
                     for i in range(t.num_rows)]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"{len(missing)} of {len(paths)} '{split}' images not found, e.g. {missing[0]}")
            seen = set()
            for i, p in enumerate(paths):
                key = (cols["subject"][i], cols["action"][i], cols["camera"][i])
                if key in seen:
                    continue
                seen.add(key)
                try:
                    with Image.open(p) as im:
                        wh = list(im.size)
                except OSError:
                    raise DataError(f"{p}: not an image Pillow can read") from None
                if wh != list(size[i]):
                    raise DataError(f"{p}: {wh[0]}x{wh[1]} px, but its row's image_size is {size[i][0]}x{size[i][1]}")
            column = (pa.array([p.read_bytes() for p in paths], pa.binary()) if embed
                      else pa.array([str(p) for p in paths], pa.string()))
            w.add_split(split, t.append_column(pa.field(IMAGE_COLUMN, column.type, nullable=False), column),
                        ds.manifest["splits"][split]["subjects"])
            say(f"{split}: {t.num_rows:,} rows, {'embedded' if embed else 'linked'} images")
        return w.commit()
