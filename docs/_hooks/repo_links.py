"""MkDocs hook: a link from a page to a file of the repository outside ``docs/`` (``../tests/
test_x.py``, ``../benchmarks/results/...``) becomes its text alone on the site, which does not
publish those files; every other link is left to MkDocs, which checks it (``strict``)."""

from __future__ import annotations

import re
from typing import Any

# [text](../path) where the target leaves docs/ (one or more ../ from the page's folder)
# (the text may hold one level of brackets: a pytest id such as test_x[float32])
_OUTSIDE = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])+)\]\(((?:\.\./)+)([^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    depth = page.file.src_uri.count("/")  # folders between docs/ and the page

    def plain(match: re.Match[str]) -> str:
        ups = match.group(2).count("../")
        return match.group(1) if ups > depth else match.group(0)

    return _OUTSIDE.sub(plain, markdown)
