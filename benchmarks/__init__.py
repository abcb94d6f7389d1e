"""Throughput and memory benchmarks: scripts that print ratios, never timed tests (DESIGN.md)."""
