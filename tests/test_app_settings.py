"""Settings (env prefix, validation, documentation) and the lazy module-level app."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import DEFAULT_MODEL_PATH, Settings


def test_env_prefix_and_defaults(monkeypatch):
    monkeypatch.setenv("PETE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("PETE_API_KEY", "zq-secret-9")
    monkeypatch.setenv("PETE_MAX_WAIT_MS", "2.5")
    s = Settings()
    assert s.max_batch_size == 7 and s.max_wait_ms == 2.5 and s.api_key.get_secret_value() == "zq-secret-9"
    assert "zq-secret-9" not in repr(s)  # the key is a SecretStr
    assert s.model_path == DEFAULT_MODEL_PATH and s.materialize_embeddings is False and s.quantize == "auto"


def test_empty_api_key_means_no_auth(monkeypatch):
    monkeypatch.setenv("PETE_API_KEY", "")
    assert Settings().api_key is None


def test_max_items_per_request_reads_its_new_and_its_former_name(monkeypatch):
    monkeypatch.setenv("PETE_MAX_PAIRS_PER_REQUEST", "9")
    assert Settings().max_items_per_request == 9
    monkeypatch.setenv("PETE_MAX_ITEMS_PER_REQUEST", "7")
    assert Settings().max_items_per_request == 7  # the new name wins
    assert Settings(max_items_per_request=5).max_items_per_request == 5


def test_invalid_settings_are_refused():
    with pytest.raises(ValidationError):
        Settings(max_batch_size=0)
    with pytest.raises(ValidationError):
        Settings(queue_capacity=10, max_items_per_request=6)  # a full /similarity request would never fit


def test_every_field_is_documented():
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_module_level_app_loads_nothing():
    from app.cli import main
    from app.main import app, create_app

    svc = app.state.service
    assert svc.runner is None and svc.model_info is None and svc.batcher is None and not svc.ready
    assert callable(create_app) and callable(main)


def test_token_capacity_must_take_a_full_request_of_long_texts():
    with pytest.raises(ValidationError, match="queue_capacity_tokens"):
        Settings(queue_capacity_tokens=8192, max_items_per_request=64, max_tokens_per_text=128)
    with pytest.raises(ValidationError, match="queue_capacity_tokens"):  # 7/8 of it is 16,128 < 16,384
        Settings(queue_capacity_tokens=18432, max_items_per_request=64, max_tokens_per_text=128)
    assert Settings(queue_capacity_tokens=18725, max_items_per_request=64, max_tokens_per_text=128)
