"""docs/guide.md runs as written: every Python block executes, in order, in one namespace, and
prints exactly the output block that follows it.

To refresh the shown outputs after a deliberate change (a retrained model, say), run
``python tests/test_guide.py``: it executes the guide and rewrites each output block.
"""
import contextlib
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"

# a ```python block, then optionally a ```text block holding what it prints
BLOCK = re.compile(r"```python\n(?P<code>.*?)```\n(?:\n```text\n(?P<output>.*?)```\n)?", re.DOTALL)


def run_guide(text: str):
    """Execute each Python block; yield (match, what it printed)."""
    namespace: dict = {"__name__": "guide"}
    for match in BLOCK.finditer(text):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(match["code"], f"{GUIDE.name} block at offset {match.start()}", "exec"), namespace)
        yield match, out.getvalue()


def test_guide_blocks_print_what_the_guide_shows():
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
            block += f"\n```text\n{printed}```\n"
        pieces.append(block)
        last = match.end()
    pieces.append(text[last:])
    GUIDE.write_text("".join(pieces), encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    update_guide()
