"""intake: a Burst-to-Queue intake engine in front of a core database."""

__version__ = "0.2.0"
