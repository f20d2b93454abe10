"""Runs every Python example of docs/asyncio.md inside a real worker."""
import os
import re

import pytest

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "docs", "asyncio.md")


def python_blocks():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    assert blocks, f"no python examples in {DOC}"
    return blocks


@pytest.mark.parametrize("source", python_blocks(), ids=lambda s: s.split("\n", 1)[0][:40])
def test_example(source):
    exec(compile(source, DOC, "exec"), {"__name__": "__doc_example__"})
