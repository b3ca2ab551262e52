"""The classes a user names, with synonyms and optional background queries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from maskclip_core.types import MAX_CLASSES

BACKGROUND = "background"
CLASS_SEPARATOR = ","
SYNONYM_SEPARATOR = ";"


@dataclass(frozen=True)
class VocabularyEntry:
    """One output class; its score is the max over its queries (the name first, then synonyms)."""

    name: str
    queries: tuple[str, ...]

    @property
    def synonyms(self) -> tuple[str, ...]:
        return self.queries[1:]


def _clean(text: str) -> str:
    return " ".join(text.split())


def parse_class(text: str) -> VocabularyEntry:
    """``"person; man; woman"`` -> class ``person`` queried as person, man and woman."""
    queries = tuple(dict.fromkeys(q for q in (_clean(p) for p in text.split(SYNONYM_SEPARATOR)) if q))
    if not queries:
        raise ValueError(f"empty class in {text!r}")
    return VocabularyEntry(queries[0], queries)


@dataclass(frozen=True)
class Vocabulary:
    """Ordered classes; label index i means ``names[i]``.

    ``background`` holds extra queries (e.g. "sky", "wall") that all vote for one class named
    ``background`` appended after the user's classes: MaskCLIP's way to let pixels of none of the
    named classes go somewhere other than the nearest named class.
    """

    classes: tuple[VocabularyEntry, ...]
    background: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if not names:
            raise ValueError("a vocabulary needs at least one class")
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"duplicate class names: {sorted(duplicates)}")
        if self.background and BACKGROUND in names:
            raise ValueError(f"'{BACKGROUND}' is both a class and the background queries' class")
        if len(self.all_classes) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} classes (label maps are uint8 with 255 = ignore)")

    @classmethod
    def parse(cls, classes: str | Iterable[str], background: str | Iterable[str] | None = None) -> Vocabulary:
        """Classes as ``"cat, grass; lawn, tree stump"`` or a list of such items; background likewise."""
        items = classes.split(CLASS_SEPARATOR) if isinstance(classes, str) else list(classes)
        specs = tuple(parse_class(item) for item in items if _clean(item))
        if background is None:
            bg: tuple[str, ...] = ()
        else:
            raw = (
                background.replace(SYNONYM_SEPARATOR, CLASS_SEPARATOR).split(CLASS_SEPARATOR)
                if isinstance(background, str)
                else list(background)
            )
            bg = tuple(dict.fromkeys(q for q in (_clean(b) for b in raw) if q))
        return cls(specs, bg)

    @property
    def all_classes(self) -> tuple[VocabularyEntry, ...]:
        if self.background:
            return self.classes + (VocabularyEntry(BACKGROUND, self.background),)
        return self.classes

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.all_classes)

    def __len__(self) -> int:
        return len(self.all_classes)

    def queries(self) -> list[tuple[str, int]]:
        """Every (query text, class index) pair, in class order."""
        return [(q, i) for i, c in enumerate(self.all_classes) for q in c.queries]

    def to_records(self) -> list[dict]:
        return [{"name": c.name, "synonyms": list(c.synonyms)} for c in self.all_classes]

    def to_json(self) -> str:
        return json.dumps(
            {"classes": [list(c.queries) for c in self.classes], "background": list(self.background)},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        return cls(tuple(VocabularyEntry(q[0], tuple(q)) for q in data["classes"]), tuple(data.get("background", ())))

    def describe(self) -> str:
        parts = [SYNONYM_SEPARATOR.join(c.queries) for c in self.classes]
        return CLASS_SEPARATOR.join(parts)


def as_vocabulary(value: Vocabulary | str | Sequence[str]) -> Vocabulary:
    return value if isinstance(value, Vocabulary) else Vocabulary.parse(value)
