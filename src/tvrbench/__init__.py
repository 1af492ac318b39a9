"""tvrbench: text-video retrieval benchmark (GLCCL versus attention alignment on DiDeMo)."""

__version__ = "0.1.0"
