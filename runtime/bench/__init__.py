"""Benchmarks behind ``commandpost bench NAME``: honest figures, one JSON line.

One module per bench, each with a ``run(**options)`` that returns its figures
(the CLI prints them as the last line); :mod:`runtime.bench.common` holds what
they share (the machine's name, CPU and memory by process group, percentiles,
the city started as ``make demo`` runs it). Timings on a shared 2-core
machine are noisy: compare within one run.
"""
