"""mkdocs hook: the docstrings' Sphinx roles (:func:`name`, :class:`~pkg.mod.Name`, ...) as links.

mkdocstrings renders a role as the text ``:func:`` followed by the code span. This hook turns each
into the code span alone, linked (an optional mkdocs-autorefs reference) to the object's entry in
the API reference when that entry exists: a dotted name is looked up as written, a bare name among
the members the API pages list (``docs/api/*.md``). ``~`` keeps only the last component as the
text, as in Sphinx. Unresolved names stay plain code, never a warning.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")
_DIRECTIVE = re.compile(r"^::: *([\w.]+)\s*$")
_MEMBER = re.compile(r"^ +- +(\w+)\s*$")

_members: dict[str, str] = {}


def on_config(config: Any) -> Any:
    """Read which module documents each member listed on the API pages."""
    _members.clear()
    for page in sorted(Path(config["docs_dir"], "api").glob("*.md")):
        module = None
        for line in page.read_text().splitlines():
            if match := _DIRECTIVE.match(line):
                module = match.group(1)
            elif module and (match := _MEMBER.match(line)):
                _members.setdefault(match.group(1), f"{module}.{match.group(1)}")
    return config


def _link(match: re.Match[str]) -> str:
    tilde, name, call = match.group(1), match.group(2), match.group(3) or ""
    text = (name.rsplit(".", 1)[-1] if tilde else name) + call
    target = name if "." in name else _members.get(name)
    code = f"<code>{html.escape(text)}</code>"
    if target is None:
        return code
    return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'


def on_page_content(content: str, **kwargs: Any) -> str:
    return _ROLE.sub(_link, content)
