"""Synthetic load for the pipeline: realistic events, duplicates and bad lines, with a manifest.

Not pipeline IO: nothing in ``pipelines/`` or ``connectors/`` imports it. ``runner.py generate``,
the tests and the benchmarks use :func:`loadgen.generate.generate_events` to make input whose
expected outcome is known.
"""
