"""int8 calibration for TensorRT 8.5-10: an entropy calibrator over a folder of images, with a cache file.

Calibration images are preprocessed exactly as frames are at run time (the model family's adapter), or
the int8 scales would describe a different input distribution. After one calibration TensorRT writes its
scales to the cache file; later builds read the cache and skip the images. The TensorRT class itself is
defined inside make_calibrator, so importing this module needs neither tensorrt nor pycuda.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from engines.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_IMAGES_ADVISED = 100  # fewer still calibrates, but the scales then follow a few frames' outliers
NEEDS_CALIBRATION = ("engine.precision int8 needs calibration data: set engine.calibration_images to a folder "
                     "of a few hundred frames like the ones it will see (JPEG/PNG), or engine.calibration_cache "
                     "to an existing TensorRT calibration cache; or use precision fp16")


@dataclass(frozen=True)
class CalibrationSource:
    images: tuple[Path, ...]  # may be empty when the cache exists
    cache_path: Path
    digest: str  # identifies the data: part of the engine's cache key

    @property
    def cache_exists(self) -> bool:
        return self.cache_path.is_file() and self.cache_path.stat().st_size > 0


def calibration_source(images_dir: Optional[Path], cache_path: Optional[Path],
                       default_cache: Path) -> CalibrationSource:
    """Validate the int8 settings; UserError (the refusal) when there is nothing to calibrate from."""
    cache = Path(cache_path).expanduser() if cache_path else default_cache
    if images_dir is None:
        if cache_path is None or not cache.is_file():
            missing = f" ({cache} does not exist)" if cache_path is not None else ""
            raise UserError(NEEDS_CALIBRATION + missing)
        return CalibrationSource((), cache, "cache:" + hashlib.sha256(cache.read_bytes()).hexdigest()[:16])
    folder = Path(images_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"engine.calibration_images: {folder} is not a directory; give a folder of JPEG/PNG frames")
    images = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
    if not images:
        raise UserError(f"engine.calibration_images: {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(images) < MIN_IMAGES_ADVISED:
        log.warning("calibrating int8 on only %d images from %s; a few hundred representative frames give "
                    "steadier scales", len(images), folder)
    # Names and sizes, not contents: hashing gigabytes of frames at every start would cost more than it
    # protects (an image edited in place keeps its size rarely enough).
    h = hashlib.sha256()
    for p in images:
        h.update(f"{p.name}\0{p.stat().st_size}\n".encode())
    return CalibrationSource(images, cache, "images:" + h.hexdigest()[:16])


def family_preprocessor(family: Optional[str], input_hw: tuple[int, int],
                        kwargs: tuple = ()) -> Callable[[np.ndarray, np.ndarray], object]:
    """The adapter's preprocess (BGR image -> one CHW row), the one frames go through at run time."""
    if not family or family == "auto":
        raise UserError("engine.precision int8: calibration preprocesses images as the model family does at "
                        "run time; set model.family (retinaface, yolo or classifier)")
    from engines.adapters import AdapterParams, adapter_class

    return adapter_class(family)(input_hw, [], AdapterParams(), **dict(kwargs)).preprocess


def batches(images: tuple[Path, ...], preprocess, batch_shape: tuple[int, int, int, int]) -> Iterator[np.ndarray]:
    """Full batches of preprocessed images (a last partial batch is dropped: the shape is fixed)."""
    import cv2

    batch = np.zeros(batch_shape, dtype=np.float32)
    n = 0
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("calibration: %s is not a readable image; skipped", path)
            continue
        preprocess(image, batch[n])
        n += 1
        if n == batch_shape[0]:
            yield batch
            batch, n = np.zeros(batch_shape, dtype=np.float32), 0  # a yielded batch is never overwritten


def read_cache(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data or None


def make_calibrator(trt, cuda, source: CalibrationSource, preprocess, batch_shape: tuple[int, int, int, int]):
    """A trt.IInt8EntropyCalibrator2 feeding `source`'s images, reading and writing its cache file."""
    from engines.cache import atomic_write

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches(source.images, preprocess, batch_shape)
            self._device = cuda.mem_alloc(int(np.prod(batch_shape)) * 4)  # one batch, reused
            self.count = 0

        def get_batch_size(self):
            return batch_shape[0]

        def get_batch(self, names):
            try:
                batch = next(self._batches)
            except StopIteration:
                return None  # tells TensorRT the data is exhausted
            cuda.memcpy_htod(self._device, np.ascontiguousarray(batch))
            self.count += 1
            if self.count % 10 == 0:
                log.info("int8 calibration: %d batches", self.count)
            return [int(self._device)]

        def read_calibration_cache(self):
            data = read_cache(source.cache_path)
            if data:
                log.info("int8: using calibration cache %s", source.cache_path)
            return data

        def write_calibration_cache(self, cache):
            source.cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(source.cache_path, bytes(cache))
            log.info("int8: calibration cache written to %s (%d batches)", source.cache_path, self.count)

    return EntropyCalibrator()
