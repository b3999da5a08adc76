"""rsi-lab orchestrator: the host side of the recursive self-improvement loop."""

__version__ = "0.1.0"
