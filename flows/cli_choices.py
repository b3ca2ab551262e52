"""argparse ``choices`` read from a core registry on first use.

The registries (attention modes, template sets, backbones, heads) live beside the torch code they name;
reading them when a flag is checked or its help is shown keeps ``maskclip --help`` and ``--version`` free
of torch imports while the names are never listed twice.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from functools import cached_property


class RegistryChoices(Sequence[str]):
    """The keys of ``module.attribute`` (a registry mapping), imported when first needed."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    @cached_property
    def _keys(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    def __contains__(self, value: object) -> bool:
        return value in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):  # type: ignore[override]
        return self._keys[index]


ATTENTION_MODES = RegistryChoices("maskclip_core.teacher.dense", "ATTENTION_MODES")
TEMPLATE_SETS = RegistryChoices("maskclip_core.teacher.prompts", "TEMPLATE_SETS")
PRECISIONS = RegistryChoices("maskclip_core.teacher.fast_paths", "PRECISIONS")
BACKBONES = RegistryChoices("maskclip_core.student.backbones", "BACKBONES")
HEADS = RegistryChoices("maskclip_core.student.model", "HEADS")
