"""Fixtures shared by several test files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The tiny word-level vocabulary of the app tests' random checkpoints (special tokens first).
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a an is are on in of and not no cat dog man woman child plays playing guitar piano "
    "sits sat mat runs running park street music sleeps eats food red blue big small").split()
BUNDLED_CHECKPOINT = ROOT / "model" / "checkpoints" / "default"


@pytest.fixture
def anyio_backend():
    """The async tests (``@pytest.mark.anyio``) run on asyncio, as the service does."""
    return "asyncio"


@pytest.fixture(scope="session")
def bundled_server():
    """The bundled checkpoint served by the real service process on 127.0.0.1 at a free port, with
    the settings README's examples are made with (the defaults, int8); yields its base URL. One server
    for the whole session."""
    if not (BUNDLED_CHECKPOINT / "model.safetensors").is_file():
        pytest.skip("no bundled checkpoint")
    from bench.readme_examples import EXAMPLE_SETTINGS
    from loadtest.server import ServerProcess

    with ServerProcess(BUNDLED_CHECKPOINT, env=EXAMPLE_SETTINGS) as server:
        yield f"http://127.0.0.1:{server.port}"


def wait_ready(base_url: str, alive: Callable[[], bool] = lambda: True, timeout_s: float = 90.0,
               why: Callable[[], str] = lambda: "") -> None:
    """Poll ``base_url``/readyz until it answers 200; fail when ``alive()`` turns false or after
    ``timeout_s`` seconds (the message ends with ``why()``, e.g. the server's log)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert alive() and time.monotonic() < deadline, f"server at {base_url} did not become ready {why()}"
        time.sleep(0.3)


def nan_checkpoint(checkpoint: Path, out: Path) -> Path:
    """A copy of ``checkpoint`` with one NaN in the encoder's weights, saved to ``out``."""
    import torch

    from model.encoder import SentenceEncoder

    model = SentenceEncoder.from_pretrained(checkpoint)
    with torch.no_grad():
        next(model.encoder.parameters()).view(-1)[0] = float("nan")
    model.save_pretrained(out)
    return out
