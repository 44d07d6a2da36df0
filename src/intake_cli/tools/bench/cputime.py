"""Moved to tools/bench/common/cpu.py, the bench's one /proc reader.

Kept only while tests/unit/test_drain_phases.py imports CpuSample from here:
once it imports from common.cpu, delete this file.
"""

from intake_cli.tools.bench.common.cpu import CpuSample

__all__ = ["CpuSample"]
