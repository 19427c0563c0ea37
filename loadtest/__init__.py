"""Load-testing tools shared by the benchmarks (bench/) and the reliability runs (reliability/).

- ``loadtest.http``     a lean HTTP/1.1 client over raw asyncio streams (``Conn``, ``request``)
- ``loadtest.load``     closed and open loops, the saturation sweep (``LoadResult`` of ``Sample``s)
- ``loadtest.server``   the service in a subprocess (``ServerProcess``) and /proc readings
- ``loadtest.serve``    ``pete-serve`` with another app factory (``python -m loadtest.serve``)
- ``loadtest.prom``     the Prometheus text parser and series sums
- ``loadtest.stats``    percentiles and latency summaries
- ``loadtest.results``  the atomic results writer and machine facts
- ``loadtest.fixtures`` random checkpoints and synthetic request bodies

Everything talks to 127.0.0.1 only, and every loop is bounded in count and in time. Not part of the
service's wheel (``pyproject.toml`` packages only ``app`` and ``model``).
"""
