"""Reliability and security runs of pete-serve (overload, soak, fuzzing, faults, security).

One command each, ``python -m reliability.<name>``; results go to ``reliability/results/``.
See ``reliability/REPORT.md``.
"""
