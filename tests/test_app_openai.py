"""The official OpenAI Python client against the live service's /v1/embeddings (bundled checkpoint)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the dev extra installs openai")


def test_openai_client_round_trips_embeddings(bundled_server):
    client = openai.OpenAI(base_url=f"{bundled_server}/v1", api_key="unused", max_retries=0)
    texts = ["A man is playing a guitar.", "Someone plays an instrument."]
    default = client.embeddings.create(model="default", input=texts)  # the client asks for base64 by default
    floats = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    one = client.embeddings.create(model="default", input=texts[0])
    assert default.model == "default" and [d.index for d in default.data] == [0, 1]
    a, b = (np.asarray(d.embedding, dtype=np.float32) for d in default.data)
    assert a.shape == (256,) and np.array_equal(a, np.asarray(floats.data[0].embedding, dtype=np.float32))
    # alone vs in a batch of two: int8 activation scales are per batch, so equal to ~1e-6, not bit for bit
    assert np.allclose(a, np.asarray(one.data[0].embedding, dtype=np.float32), atol=1e-5)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
    # the vectors are the ones /similarity compares
    score = httpx.post(f"{bundled_server}/similarity", json={"pairs": [{"text_a": texts[0], "text_b": texts[1]}]},
                       timeout=30).json()["scores"][0]
    assert abs(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) - score) < 1e-5
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model="default", input="")
    assert err.value.status_code == 422 and err.value.response.json()["detail"][0]["field"] == "input.0"
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="default", input="a", dimensions=64)
