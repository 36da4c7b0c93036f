"""perceptd: a real-time video perception daemon (capture -> inference worker -> sinks)."""

__version__ = "0.1.0"
