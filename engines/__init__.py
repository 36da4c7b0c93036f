"""Inference backends, built-in models and model-family adapters (independent of the daemon)."""

from engines.base import Engine, EngineError, TensorInfo, available_backends, create_engine, register_backend

__all__ = ["Engine", "EngineError", "TensorInfo", "available_backends", "create_engine", "register_backend"]
