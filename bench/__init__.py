"""Benchmarks of pete-serve: embedding study, serving load test, FLOP/s and profile.

Run them as modules from the repository root (see ``bench/README.md``)::

    .venv/bin/python -m bench.embedding_study --help
    .venv/bin/python -m bench.serving --help
    .venv/bin/python -m bench.flops --help
"""
