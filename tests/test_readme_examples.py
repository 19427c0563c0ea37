"""README's request/response examples agree with the bundled model served live (bench/readme_examples.py)."""

from __future__ import annotations

import pytest

from bench import readme_examples as rx


def test_every_readme_example_is_what_the_live_service_answers(bundled_server):
    examples = rx.read_examples(rx.README.read_text())
    assert {e.name for e in examples} >= {"similarity", "nli", "embeddings", "probes", "error"}
    for e in examples:
        live = rx.answers(bundled_server, e)
        assert rx.same_output(e.output, live), (
            f"README example {e.name!r} differs from the service: run .venv/bin/python -m bench.readme_examples\n"
            f"README:\n{e.output}\nlive:\n{live}")
    assert rx.main(["--check", "--url", bundled_server]) == 0


def test_curl_commands_are_parsed_as_sent():
    cmd = rx.parse_curl("curl -s -i http://127.0.0.1:8000/nli \\\n  -H 'content-type: application/json' \\\n"
                        "  -d '{\"pairs\": []}'")
    assert (cmd.method, cmd.path, cmd.headers, cmd.data, cmd.include_status) == (
        "POST", "/nli", {"content-type": "application/json"}, '{"pairs": []}', True)
    assert rx.parse_curl("curl -s http://127.0.0.1:8000/healthz").method == "GET"
    with pytest.raises(ValueError, match="unknown curl argument"):
        rx.parse_curl("curl -X PUT http://127.0.0.1:8000/healthz")
    bash = "curl -s http://127.0.0.1:8000/a \\\n  -d '{\"x\":\n 1}'\ncurl -s http://127.0.0.1:8000/b\n"
    assert [rx.parse_curl(c).path for c in rx.split_commands(bash)] == ["/a", "/b"]


def test_a_drifted_answer_is_caught_and_long_vectors_are_abbreviated():
    live = {"scores": [0.61781, -0.0142], "data": [{"embedding": [0.5] * 256}], "ok": True}
    shown = rx.compact(rx.abbreviate(live))
    assert '"embedding":[0.5,0.5,0.5,"... 253 more"]' in shown
    assert rx.same_output(shown, rx.compact(live))
    assert not rx.same_output(shown.replace("0.61781", "0.65"), rx.compact(live))  # a score moved
    assert not rx.same_output(shown.replace("253 more", "127 more"), rx.compact(live))  # a shorter vector
    assert not rx.same_output(shown.replace("true", "false"), rx.compact(live))
    assert rx.same_output(shown.replace("0.61781", "0.6179"), rx.compact(live))  # last digits: within 1e-3
    text = "<!-- example:x -->\n```bash\ncurl -s http://127.0.0.1:8000/healthz\n```\n\n```json\nold\n```\n<!-- /example:x -->\n"
    assert rx.render_readme(text, {"x": '{"status":"ok"}'}) == text.replace("old", '{"status":"ok"}')
