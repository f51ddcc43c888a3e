"""docs/guide.md runs as written: every Python block executes, in order, in one namespace, and
prints exactly the output block that follows it.

The guide runs on SmolLM2-135M-Instruct, which it pulls by name; here the model cache is the
tests' own (``tests/.cache``, where the ``smollm2`` fixture has pulled it with the pinned download).
To refresh the shown outputs after a deliberate change, run ``python tests/test_guide.py``:
it executes the guide and rewrites each output block.  Both run with the arithmetic of llama.cpp
built for AVX2 (``GUIDE_ISA``), so what the guide shows does not depend on the host's CPU.
"""
import contextlib
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
TEST_CACHE = ROOT / "tests" / ".cache"
GUIDE_ISA = "avx2"  # the ggml_isa whose outputs the guide shows

# a ```python block, then optionally a text block holding what it prints, fenced by three backticks or,
# when the output holds backticks itself (a model writing Markdown), by more
BLOCK = re.compile(r"```python\n(?P<code>.*?)```\n(?:\n(?P<fence>````*)text\n(?P<output>.*?)(?P=fence)\n)?", re.DOTALL)


def run_guide(text: str):
    """Execute each Python block; yield (match, what it printed)."""
    namespace: dict = {"__name__": "guide"}
    for match in BLOCK.finditer(text):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(match["code"], f"{GUIDE.name} block at offset {match.start()}", "exec"), namespace)
        yield match, out.getvalue()


def test_guide_blocks_print_what_the_guide_shows(smollm2, monkeypatch):
    monkeypatch.setenv("LLAMANP_CACHE", str(smollm2().parent))
    monkeypatch.setenv("LLAMANP_GGML_ISA", GUIDE_ISA)
    text = GUIDE.read_text(encoding="utf-8")
    n = 0
    for match, printed in run_guide(text):
        n += 1
        assert printed == (match["output"] or ""), f"block {n} of the guide:\n{match['code']}"
    assert n >= 10


def update_guide() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    pieces, last = [], 0
    for match, printed in run_guide(text):
        pieces.append(text[last:match.start()])
        block = f"```python\n{match['code']}```\n"
        if printed:
            fence = "`" * max(3, 1 + max(map(len, re.findall("`+", printed)), default=0))
            block += f"\n{fence}text\n{printed}{fence}\n"
        pieces.append(block)
        last = match.end()
    pieces.append(text[last:])
    GUIDE.write_text("".join(pieces), encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ["LLAMANP_CACHE"] = str(TEST_CACHE)
    os.environ["LLAMANP_GGML_ISA"] = GUIDE_ISA
    update_guide()
