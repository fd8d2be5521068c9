"""The provider catalog's words for translators: a Babel extraction method for the catalog YAML files.

Field labels, help texts, option labels, descriptions, warnings and notes are data in
``app/providers/catalog/*.yaml`` and ``app/providers/field_groups.yaml``; ``make messages`` (babel.cfg) finds
them here, and the pages that show them translate them when they render (``gettext`` on the catalog's English
text, which is the msgid). Identifiers, URLs, header templates and sample values are not words for people and
stay out. The JSON schema API keeps the English text: it is data for programs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import IO, Any

import yaml

from app.errors import translated

__all__ = ["TEXT_KEYS", "TEXT_LIST_KEYS", "catalog_text", "extract_catalog"]

# Keys whose string value people read (forms, console, connections page, sign-in button).
TEXT_KEYS = frozenset({"label", "help", "description", "revoke_hint", "connect", "tokens", "placeholder"})
# Keys whose list of strings people read.
TEXT_LIST_KEYS = frozenset({"admin_warnings", "setup", "connection_test"})
# Mappings whose keys are names, not catalog keywords (a field called "label" under visible_when or override).
_NAME_MAPS = frozenset({"visible_when", "implies", "endpoints", "claims", "keep", "params", "refresh_params"})


def _is_text(key: str, value: str) -> bool:
    # A placeholder is often a sample value (587, api_key, https://…): only a phrase is words to translate.
    return bool(value.strip()) and (key != "placeholder" or " " in value.strip())


def _walk(node: yaml.Node, found: list[tuple[int, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
            if key in _NAME_MAPS:
                continue
            if key in TEXT_KEYS and isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":str"):
                if _is_text(key, value_node.value):
                    found.append((value_node.start_mark.line + 1, value_node.value))
            elif key in TEXT_LIST_KEYS and isinstance(value_node, yaml.SequenceNode):
                found.extend(
                    (item.start_mark.line + 1, item.value)
                    for item in value_node.value
                    if isinstance(item, yaml.ScalarNode) and item.value.strip()
                )
            else:
                _walk(value_node, found)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _walk(item, found)


def extract_catalog(
    fileobj: IO[bytes], keywords: Mapping[str, Any], comment_tags: Collection[str], options: Mapping[str, Any]
) -> Iterator[tuple[int, str, str, list[str]]]:
    """Babel extraction method (babel.cfg): ``(lineno, funcname, message, comments)`` for each text of a file."""
    root = yaml.compose(fileobj.read().decode("utf-8"), Loader=yaml.SafeLoader)
    found: list[tuple[int, str]] = []
    if root is not None:
        _walk(root, found)
    for lineno, message in found:
        yield lineno, "gettext", message, ["provider catalog"]


def catalog_text(text: str | None) -> str:
    """A catalog text in the reader's language (the ``translated`` template filter); blank stays blank. A text
    marked with its values (``app.errors.N_``) is translated with them."""
    return translated(text) if text else ""
