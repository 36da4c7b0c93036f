"""Tests that need TensorRT, pycuda and a CUDA GPU; skipped cleanly where any is missing."""
