"""README's request/response examples, answered by a live service (never typed by hand).

    .venv/bin/python -m bench.readme_examples                 # start the bundled model, rewrite README.md
    .venv/bin/python -m bench.readme_examples --check         # exit 1 when README.md and the service disagree
    .venv/bin/python -m bench.readme_examples --url http://127.0.0.1:8000   # use a running service

An example in README.md sits between ``<!-- example:NAME -->`` and ``<!-- /example:NAME -->``: a
```` ```bash ```` block of ``curl`` commands, then one block holding their outputs, one per command,
in order. The commands are the source: each is parsed (``curl -s [-i] URL [-H 'k: v'] [-d 'body']``),
sent to the service (the README's ``http://127.0.0.1:8000`` replaced by the live address) and its
answer rendered as the service sends it (compact JSON), with lists longer than ``MAX_LIST`` numbers
cut to their first ``KEEP`` and a ``"... N more"`` marker, so a 256-float embedding stays readable and
the block stays valid JSON. ``-i`` adds the status line and the content type.

``tests/test_readme_examples.py`` runs every example against the bundled checkpoint served with the
default settings but float32 weights (``EXAMPLE_SETTINGS``) and fails when an answer differs (numbers
within ``TOLERANCE``: float kernels may differ in the last digits between CPUs).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import REPO_ROOT

README = REPO_ROOT / "README.md"
# The service defaults, but float32 on every CPU: README's outputs must not depend on the machine that
# wrote them. float32 answers agree across CPUs to ~1e-6; int8 ones do not (a float difference of 1e-6
# upstream flips the odd activation's rounding: the same int8 model scored 1.1e-3 apart on an AVX2 and
# an AVX512-VNNI host), and "auto" picks int8 or float32 by the CPU.
EXAMPLE_SETTINGS = {"PETE_TORCH_THREADS": "1", "PETE_QUANTIZE": "none"}
README_URL = "http://127.0.0.1:8000"
MAX_LIST, KEEP = 8, 3
TOLERANCE = 1e-3
BLOCK = re.compile(r"(<!-- example:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /example:(?P=name) -->)", re.S)
FENCE = re.compile(r"```(?P<lang>\w*)\n(?P<text>.*?)```", re.S)


@dataclass
class Command:
    """One parsed curl command."""

    method: str
    path: str
    headers: dict[str, str]
    data: str | None
    include_status: bool


def parse_curl(command: str) -> Command:
    """``curl -s [-i] URL [-H 'k: v'] [-d 'body']`` (backslash line continuations allowed).

    Raises:
        ValueError: not a curl command, no README URL, or an option this parser does not know.
    """
    words = shlex.split(command.replace("\\\n", " "))
    if not words or words[0] != "curl":
        raise ValueError(f"not a curl command: {command!r}")
    url, headers, data, include = None, {}, None, False
    it = iter(words[1:])
    for w in it:
        if w == "-s":
            continue
        if w == "-i":
            include = True
        elif w == "-H":
            k, _, v = next(it).partition(":")
            headers[k.strip().lower()] = v.strip()
        elif w == "-d":
            data = next(it)
        elif w.startswith(README_URL):
            url = w
        else:
            raise ValueError(f"unknown curl argument {w!r} in {command!r}")
    if url is None:
        raise ValueError(f"no {README_URL} URL in {command!r}")
    return Command("POST" if data is not None else "GET", url[len(README_URL):], headers, data, include)


def split_commands(bash: str) -> list[str]:
    """The commands of a bash block: lines joined across trailing backslashes and open quotes."""
    commands, current = [], ""
    for line in bash.splitlines():
        current = f"{current}\n{line}" if current else line
        try:
            shlex.split(current.replace("\\\n", " "))
        except ValueError:  # an open quote: the command goes on
            continue
        if not current.rstrip().endswith("\\"):
            if current.strip():
                commands.append(current.strip())
            current = ""
    return commands


def abbreviate(obj: Any) -> Any:
    """Lists of more than ``MAX_LIST`` numbers cut to ``KEEP`` and a ``"... N more"`` marker."""
    if isinstance(obj, dict):
        return {k: abbreviate(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) > MAX_LIST and all(isinstance(x, (int, float)) for x in obj):
            return obj[:KEEP] + [f"... {len(obj) - KEEP} more"]
        return [abbreviate(x) for x in obj]
    return obj


def compact(obj: Any) -> str:
    """JSON as the service renders it (no spaces)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def run_command(client: httpx.Client, cmd: Command) -> str:
    """Send ``cmd`` to the service and render the answer as README shows it."""
    r = client.request(cmd.method, cmd.path, headers=cmd.headers, content=cmd.data)
    try:
        body = compact(abbreviate(r.json()))
    except ValueError:
        body = r.text.rstrip("\n")
    if not cmd.include_status:
        return body
    return f"HTTP/1.1 {r.status_code} {r.reason_phrase}\ncontent-type: {r.headers.get('content-type')}\n\n{body}"


@dataclass
class Example:
    """One README example: its name, its curl commands, the output block as README has it."""

    name: str
    commands: list[str]
    output_lang: str
    output: str


def read_examples(text: str) -> list[Example]:
    """Every example block of README ``text``.

    Raises:
        ValueError: a block without a bash block followed by an output block, or no example at all.
    """
    out = []
    for m in BLOCK.finditer(text):
        fences = FENCE.findall(m.group("body"))
        if len(fences) != 2 or fences[0][0] != "bash":
            raise ValueError(f"example {m.group('name')}: want a ```bash block then an output block")
        out.append(Example(m.group("name"), split_commands(fences[0][1]), fences[1][0], fences[1][1].rstrip("\n")))
    if not out:
        raise ValueError("README.md has no <!-- example:NAME --> block")
    return out


def answers(base_url: str, example: Example) -> str:
    """The live service's output block for ``example`` (outputs of its commands, one per line)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        return "\n".join(run_command(client, parse_curl(c)) for c in example.commands)


def render_readme(text: str, outputs: dict[str, str]) -> str:
    """README ``text`` with each example's output block replaced by ``outputs[name]``."""
    def replace(m: re.Match) -> str:
        body = m.group("body")
        fences = list(FENCE.finditer(body))
        out = fences[1]
        new = f"```{out.group('lang')}\n{outputs[m.group('name')]}\n```"
        return m.group(1) + body[: out.start()] + new + body[out.end():] + m.group(4)
    return BLOCK.sub(replace, text)


def _more(values: list) -> re.Match | None:
    return re.fullmatch(r"\.\.\. (\d+) more", values[-1]) if values and isinstance(values[-1], str) else None


def same(readme: Any, live: Any, tol: float = TOLERANCE) -> bool:
    """README's value equals the live one: numbers within ``tol``, ``"... N more"`` standing for
    exactly N further items."""
    if isinstance(readme, dict) and isinstance(live, dict):
        return readme.keys() == live.keys() and all(same(readme[k], live[k], tol) for k in readme)
    if isinstance(readme, list) and isinstance(live, list):
        if (m := _more(readme)) and not _more(live):  # README abbreviated, live in full
            shown = readme[:-1]
            return len(live) == len(shown) + int(m.group(1)) and same(shown, live[: len(shown)], tol)
        return len(readme) == len(live) and all(same(a, b, tol) for a, b in zip(readme, live))
    if isinstance(readme, bool) or isinstance(live, bool):
        return readme is live
    if isinstance(readme, (int, float)) and isinstance(live, (int, float)):
        return abs(readme - live) <= tol
    return readme == live


def same_output(readme: str, live: str) -> bool:
    """Two output blocks agree line by line (JSON lines through ``same``, other lines exactly)."""
    a, b = readme.splitlines(), live.splitlines()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        try:
            if not same(json.loads(x), json.loads(y)):
                return False
        except ValueError:
            if x != y:
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme_examples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running service (default: start the bundled checkpoint on a free port)")
    p.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = p.parse_args(argv)
    text = README.read_text()
    examples = read_examples(text)

    def collect(url: str) -> dict[str, str]:
        return {e.name: answers(url, e) for e in examples}

    if args.url:
        outputs = collect(args.url)
    else:
        from loadtest.server import ServerProcess

        with ServerProcess(REPO_ROOT / "model" / "checkpoints" / "default", env=EXAMPLE_SETTINGS) as srv:
            outputs = collect(f"http://127.0.0.1:{srv.port}")
    stale = [e.name for e in examples if not same_output(e.output, outputs[e.name])]
    if args.check:
        for name in stale:
            print(f"README example {name!r} differs from the service:\n{outputs[name]}", file=sys.stderr)
        return 1 if stale else 0
    # only examples that disagree are rewritten (the last digits of int8 scores differ between CPUs)
    README.write_text(render_readme(text, {e.name: outputs[e.name] if e.name in stale else e.output
                                           for e in examples}))
    print(f"README.md: {len(examples)} examples, {len(stale)} rewritten ({', '.join(stale) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
