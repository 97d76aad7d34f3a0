"""mkdocs hooks: the repository's README.md is the site's front page (index.md).

The README links to the site's pages as ``docs/<page>.md`` (right when read on a forge); on the site
those pages sit beside the front page, so the prefix is dropped. Any other link in the README that
leaves ``docs/`` would leave the site, and mkdocs' strict validation fails the build on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[1] / "README.md"


def front_page(markdown: str) -> str:
    """The README as the site's index: ``](docs/x.md)`` becomes ``](x.md)``."""
    return re.sub(r"\]\(docs/", "](", markdown)


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "index.md", content=front_page(README.read_text(encoding="utf-8"))))
    return files
