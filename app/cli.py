"""``pete-serve``: the service's command line.

    pete-serve                          # serve with the PETE_* settings from the environment
    pete-serve --port 9000 --model DIR  # options override the environment for this run
    pete-serve --help | --version

Options are applied as their ``PETE_*`` environment variables before ``Settings`` is read, so the
uvicorn worker processes (which build the app themselves through ``app.main:create_app``) see the
same values. A bad setting or a checkpoint directory without its files ends the command with a
one-line message and exit status 2, before any server starts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

OPTIONS = {  # option -> (environment variable, type, help)
    "--host": ("PETE_HOST", str, "address to bind (default: PETE_HOST or 127.0.0.1)"),
    "--port": ("PETE_PORT", int, "TCP port (default: PETE_PORT or 8000)"),
    "--workers": ("PETE_WORKERS", int, "uvicorn worker processes, each with its own model copy "
                                      "(default: PETE_WORKERS or 1)"),
    "--model": ("PETE_MODEL_PATH", str, "checkpoint directory (default: PETE_MODEL_PATH or the bundled "
                                       "model/checkpoints/default)"),
}


def version() -> str:
    """The installed distribution's version (``pyproject.toml``), or ``app.main.__version__`` when the
    package runs from a source tree that is not installed."""
    try:
        return metadata.version("pete-serve")
    except metadata.PackageNotFoundError:
        from app.main import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``pete-serve`` argument parser (every other setting: ``PETE_*`` variables, README)."""
    p = argparse.ArgumentParser(prog="pete-serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pete-serve {version()}")
    for flag, (_, typ, text) in OPTIONS.items():
        p.add_argument(flag, type=typ, help=text)
    return p


def apply_options(args: argparse.Namespace, environ=os.environ) -> None:
    """Write the options given on the command line into ``environ`` as their ``PETE_*`` variables."""
    for flag, (var, _, _) in OPTIONS.items():
        value = getattr(args, flag.lstrip("-"))
        if value is not None:
            environ[var] = str(value)


MALLOC_ARENAS = "1"  # glibc's default is 8 per core


def limit_malloc_arenas(environ=os.environ) -> int | None:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX``) for this process and the workers it starts,
    unless the operator set the variable: 1 by default.

    glibc gives each thread that allocates its own arena (up to 8 per core); memory freed in one
    arena is not reused by another. The service loads the model in one thread and runs the warm-up
    and every batch in others, so their heaps stack up: the ONNX service's peak RSS was 282-350 MiB
    with glibc's default and 198 MiB with one arena (bench/results/memory/README.md). Worker processes
    read the variable when they start; this process is already running, so the same limit is also
    applied with ``mallopt(M_ARENA_MAX)`` (before any thread exists, hence here and not in the app).

    Returns the limit applied, or None where it cannot be (not glibc, or a value that is not a
    positive integer: left to glibc, which ignores it).
    """
    value = environ.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)
    try:
        import ctypes

        arenas = int(value)
        M_ARENA_MAX = -8  # malloc.h
        if arenas >= 1 and ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas) == 1:
            return arenas
    except (OSError, AttributeError, ValueError):
        pass
    return None


QUANTIZE_PROBE = "from app.cli import print_resolved_quantization; print_resolved_quantization()"


def print_resolved_quantization() -> None:
    """Load the runner that the settings (environment) name and print the quantization its load
    resolved (``none`` or ``int8``): what ``shared_quantization`` runs in a child process."""
    from app.service import default_runner
    from app.settings import Settings

    runner = default_runner(Settings(), None)
    runner.load()
    print(runner.info().quantization)


def shared_quantization(workers: int, quantize: str, environ=os.environ, timeout_s: float = 300.0) -> str | None:
    """With several workers and ``PETE_QUANTIZE=auto``, resolve ``auto`` once and set the result in
    ``environ`` (``PETE_QUANTIZE``), so that every worker serves the same weights.

    Each worker would otherwise time int8 against float32 on its own, while the others load and time
    theirs: measured with two ONNX workers, one picked int8 and the other float32, and the same request
    got scores 0.015 apart depending on which worker answered it (tests/test_deploy_image.py caught it).
    The measurement runs in a child process (``QUANTIZE_PROBE``), alone, before the workers start;
    the supervising process imports neither torch nor ONNX Runtime. It costs one model load at start-up
    (a few seconds).

    Returns the mode set, or None: one worker, a mode other than ``auto``, or a probe that failed (each
    worker then resolves ``auto`` itself, and a broken checkpoint fails there with its own message).
    """
    from model.config import QUANTIZATION_MODES

    if workers <= 1 or quantize != "auto":
        return None
    try:
        probe = subprocess.run([sys.executable, "-c", QUANTIZE_PROBE], env=dict(environ), capture_output=True,
                               text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    printed = probe.stdout.split()
    if probe.returncode != 0 or not printed or printed[-1] not in QUANTIZATION_MODES:
        return None
    environ["PETE_QUANTIZE"] = printed[-1]
    return printed[-1]


class StartupError(ValueError):
    """A setting is invalid or the checkpoint directory lacks a file; the message says which."""


def checked_settings():
    """``Settings`` from the environment, with the checkpoint's files present.

    Raises:
        StartupError: a setting is invalid or the checkpoint directory lacks a file.
    """
    from pydantic import ValidationError

    from app.settings import Settings
    from model.config import CHECKPOINT_FILES, WEIGHTS_NAME

    try:
        settings = Settings()
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise StartupError(f"invalid setting: {errors}") from None
    missing = [n for n in CHECKPOINT_FILES[settings.backend] if not (settings.model_path / n).is_file()]
    if missing:
        hint = f"; run pete-export {settings.model_path}" if settings.backend == "onnx" and \
            (settings.model_path / WEIGHTS_NAME).is_file() else ""
        raise StartupError(f"no checkpoint at {settings.model_path} (missing {', '.join(missing)}){hint}; "
                           "pass --model DIR or set PETE_MODEL_PATH")
    return settings


APP_FACTORY = "app.main:create_app"


def main(argv: list[str] | None = None, factory: str = APP_FACTORY) -> int:
    """Console entry ``pete-serve``: parse options, check the settings, run uvicorn with the app factory.

    ``factory``: the ``module:function`` uvicorn imports in each worker (an import string, so that
    several workers can build their own app); tools that serve a variant of the app pass their own
    (``reliability.harness``). Returns 0 after a clean stop (SIGTERM or Ctrl-C drains in-flight requests first); exits 2 on a bad
    option, setting or checkpoint path.
    """
    args = build_parser().parse_args(argv)
    apply_options(args)
    try:
        settings = checked_settings()
    except StartupError as e:
        print(f"pete-serve: {e}", file=sys.stderr)
        return 2
    limit_malloc_arenas()
    shared_quantization(settings.workers, settings.quantize)
    import uvicorn

    # uvicorn drains on SIGTERM, then restores the handler it found and re-raises the signal; with the
    # default handler the process would die by SIGTERM (status 143) after a clean drain. Exit 0 instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with metrics_directory(settings.workers):
        uvicorn.run(factory, factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=settings.log_level,
                    timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s))
    return 0


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[str | None]:
    """With several workers, point ``PROMETHEUS_MULTIPROC_DIR`` (inherited by the workers) at an
    empty directory so /metrics merges all workers (``app.metrics``): a fresh temporary one, removed
    afterwards, or the operator's own, emptied of a previous run's files first. One worker: nothing.
    """
    from app.metrics import MULTIPROC_ENV

    if workers <= 1:
        yield None
        return
    own = os.environ.get(MULTIPROC_ENV)
    path = Path(own) if own else Path(tempfile.mkdtemp(prefix="pete-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield str(path)
    finally:
        if not own:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
