"""int8 calibration for TensorRT 8.5-10: an entropy calibrator over a folder of images, with a cache file.

Calibration images must be preprocessed exactly as frames are at run time, or the int8 scales describe a
different input distribution. How a frame is preprocessed depends on the model family, which a backend
never knows: the caller hands over a `Preprocess` callable (the pipeline builds one from the family's
adapter) and this module only reads images and calls it. After one calibration TensorRT writes its scales
to the cache file; later builds read the cache and skip the images, but only a cache made from the same
images and preprocessing (its name, or its sidecar, carries their digest). The TensorRT class itself is
defined inside make_calibrator, so importing this module needs neither tensorrt nor pycuda.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from engines.cache import atomic_write, sha256_file
from engines.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_IMAGES_ADVISED = 100  # fewer still calibrates, but the scales then follow a few frames' outliers
NEEDS_CALIBRATION = ("engine.precision int8 needs calibration data: set engine.calibration_images to a folder "
                     "of a few hundred frames like the ones it will see (JPEG/PNG), or engine.calibration_cache "
                     "to an existing TensorRT calibration cache; or use precision fp16")

# Writes one BGR image into `out`, a (C, H, W) float32 row at the engine's input size, as frames are
# preprocessed at run time. It crosses into the (spawned) worker inside EngineOptions, so it must pickle;
# a frozen dataclass also has a stable repr, which is part of the calibration's digest.
Preprocess = Callable[[np.ndarray, np.ndarray], object]


@dataclass(frozen=True)
class CalibrationSource:
    images: tuple[Path, ...]  # empty when calibrating from an existing cache only
    cache_path: Path
    digest: str  # identifies the data and its preprocessing: part of the engine's cache key
    preprocess: Optional[Preprocess] = None

    @property
    def cache_exists(self) -> bool:
        return self.cache_path.is_file() and self.cache_path.stat().st_size > 0


def calibration_source(images_dir: Optional[Path], cache_path: Optional[Path], default_stem: Path, batch: int,
                       preprocess: Optional[Preprocess]) -> CalibrationSource:
    """Validate the int8 settings; UserError (the refusal) when there is nothing, or too little, to calibrate
    from. `default_stem` + the data's digest names the cache when engine.calibration_cache is not set."""
    if images_dir is None:
        cache = Path(cache_path).expanduser() if cache_path else None
        if cache is None or not cache.is_file():
            raise UserError(NEEDS_CALIBRATION + (f" ({cache} does not exist)" if cache is not None else ""))
        return CalibrationSource((), cache, "cache:" + hashlib.sha256(cache.read_bytes()).hexdigest()[:16])
    folder = Path(images_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"engine.calibration_images: {folder} is not a directory; give a folder of JPEG/PNG frames")
    images = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
    if not images:
        raise UserError(f"engine.calibration_images: {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(images) < batch:
        raise UserError(f"engine.calibration_images: {folder} has {len(images)} image(s) but int8 calibration "
                        f"runs whole batches of {batch} (engine.max_batch): add at least {batch - len(images)} "
                        "more frames (a few hundred are advised), or lower engine.max_batch")
    if preprocess is None:
        raise UserError("engine.calibration_images: int8 calibration preprocesses the images as frames are at run "
                        "time, which depends on the model family; set model.family (retinaface, yolo or classifier)")
    if len(images) < MIN_IMAGES_ADVISED:
        log.warning("calibrating int8 on only %d images from %s; a few hundred representative frames give "
                    "steadier scales", len(images), folder)
    digest = "images:" + images_digest(images, preprocess)[:16]
    cache = Path(cache_path).expanduser() if cache_path else default_stem.with_name(
        f"{default_stem.name}-{digest[7:19]}.calib")
    return CalibrationSource(images, cache, digest, preprocess)


def images_digest(images: tuple[Path, ...], preprocess: Optional[Preprocess]) -> str:
    """SHA-256 over the preprocessing and every image's name, size and content: a new image set, or one image
    replaced by another of the same name and size, gets new scales and a new engine. Hashing the bytes is
    affordable: a few hundred JPEG frames are tens of MB, well under a second even on a Jetson core, and
    only int8 calibrating from images pays it."""
    h = hashlib.sha256(describe(preprocess).encode() + b"\n")
    for p in images:
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def describe(preprocess: Optional[Preprocess]) -> str:
    """A dataclass's repr names its parameters (a classifier's mean/std); anything else only by its name,
    never by its address, which changes every run and would rebuild the engine every start."""
    if preprocess is None:
        return ""
    if dataclasses.is_dataclass(preprocess):
        return repr(preprocess)
    return f"{getattr(preprocess, '__module__', '?')}.{getattr(preprocess, '__qualname__', type(preprocess).__name__)}"


def batches(images: tuple[Path, ...], preprocess: Preprocess,
            batch_shape: tuple[int, int, int, int]) -> Iterator[np.ndarray]:
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


def _sidecar(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".json")


def read_cache(source: CalibrationSource) -> bytes | None:
    """The cache's bytes, when it was made from this source's images (its sidecar says so) or when a cache
    is all there is; None means calibrate."""
    try:
        data = source.cache_path.read_bytes()
    except OSError:
        return None
    if data and source.images:
        try:
            made_from = json.loads(_sidecar(source.cache_path).read_text()).get("calibration")
        except (OSError, ValueError, AttributeError):
            made_from = None
        if made_from != source.digest:
            log.info("int8: %s was made from other images or preprocessing (%s, now %s); calibrating again",
                     source.cache_path, made_from or "unknown", source.digest)
            return None
    return data or None


def write_cache(source: CalibrationSource, data: bytes, batches_used: int) -> None:
    source.cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(source.cache_path, data)
    side = {"calibration": source.digest, "images": len(source.images), "batches": batches_used}
    atomic_write(_sidecar(source.cache_path), (json.dumps(side, sort_keys=True) + "\n").encode())


def make_calibrator(trt, cuda, source: CalibrationSource, batch_shape: tuple[int, int, int, int]):
    """A trt.IInt8EntropyCalibrator2 feeding `source`'s images, reading and writing its cache file."""
    per_batch = batch_shape[0]

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches(source.images, source.preprocess, batch_shape) if source.images else iter(())
            self._device = cuda.mem_alloc(int(np.prod(batch_shape)) * 4)  # one batch, reused
            self.count = 0
            self.cache_used = False

        def get_batch_size(self):
            return per_batch

        def get_batch(self, names):
            if self.count == 0:  # TensorRT asks for batches only when it found no usable cache
                n = len(source.images)
                log.info("int8 calibration: %d images -> %d batch(es) of %d (%d left over)", n, n // per_batch,
                         per_batch, n % per_batch)
            try:
                batch = next(self._batches)
            except StopIteration:
                log.info("int8 calibration: %d batch(es) of %d fed to TensorRT", self.count, per_batch)
                return None  # tells TensorRT the data is exhausted
            cuda.memcpy_htod(self._device, np.ascontiguousarray(batch))
            self.count += 1
            if self.count % 10 == 0:
                log.info("int8 calibration: %d batches so far", self.count)
            return [int(self._device)]

        def read_calibration_cache(self):
            data = read_cache(source)
            if data:
                log.info("int8: using calibration cache %s", source.cache_path)
                self.cache_used = True
            return data

        def check_fed(self) -> None:
            """UserError when TensorRT got neither a cache nor one batch (the images were unreadable)."""
            if not self.cache_used and self.count == 0:
                raise UserError(f"engine.calibration_images: no calibration batch of {per_batch} could be made from "
                                f"{len(source.images)} image(s) (unreadable ones are skipped, see the log); add "
                                "readable frames or lower engine.max_batch")

        def write_calibration_cache(self, cache):
            write_cache(source, bytes(cache), self.count)
            log.info("int8: calibration cache written to %s (%d batches)", source.cache_path, self.count)

    return EntropyCalibrator()
