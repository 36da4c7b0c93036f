"""pycuda.driver where it cannot run (no GPU here), for tests/trt_standin.py: device memory is host memory
addressed as pycuda addresses it (int(allocation)), so the stand-in TensorRT can read the buffers perceptd
binds and write its outputs where perceptd will copy them from."""

from __future__ import annotations

import types

import numpy as np


class Memory:
    """Device memory as pycuda hands it out: allocations addressed by int(allocation)."""

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> "Allocation":
        a = Allocation(self, nbytes)
        self.blocks[int(a)] = a.data
        return a

    def view(self, address: int, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape))
        return self.blocks[address][: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


class Allocation:
    _next = 0x1000

    def __init__(self, memory: Memory, nbytes: int):
        self.data = np.zeros(int(nbytes), np.uint8)
        self.address = Allocation._next
        Allocation._next += (int(nbytes) + 0xFFF) // 0x1000 * 0x1000 + 0x1000
        self.freed = False

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        self.freed = True


def stand_in_pycuda(memory: Memory, devices=("Orin", (8, 7))) -> types.ModuleType:
    """pycuda.driver with one device; copies are synchronous (their order is what perceptd relies on)."""
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Context:
        def pop(self):
            pass

        def detach(self):
            pass

    class Device:
        @staticmethod
        def count():
            return 1

        def __init__(self, index):
            self.index = index

        def name(self):
            return devices[0]

        def compute_capability(self):
            return devices[1]

        def make_context(self):
            return Context()

    class Stream:
        handle = 0x5EED

        def synchronize(self):
            pass

    def htod(dev, host, stream=None):
        flat = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        dev.data[: flat.size] = flat

    def dtoh(host, dev, stream=None):
        flat = host.reshape(-1).view(np.uint8)
        flat[:] = dev.data[: flat.size]

    cuda.Error, cuda.Device, cuda.Stream = Error, Device, Stream
    cuda.init = lambda: None
    cuda.pagelocked_empty = lambda count, dtype: np.empty(count, dtype)
    cuda.mem_alloc = memory.alloc
    cuda.memcpy_htod, cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = htod, htod, dtoh
    return cuda
