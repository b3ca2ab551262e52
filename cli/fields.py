"""Options generated from the pydantic models the Prefect forms use, and choices read from the core registries.

An option that fills a model field takes its help (the field's description), the default its help shows (the
field's default) and its choices (the field's Literal values, which the registries define) from the field
itself. The option's own default is None ("not given"): a command builds the model from the fields the user
typed (``field_values``), so the model's defaults apply by construction and nothing here restates them.

Models and registries are named by module and attribute and imported when first needed (showing help,
checking a typed choice, building the model): building the parser stays free of torch and Prefect.
"""

from __future__ import annotations

import argparse
import importlib
import typing
from collections.abc import Iterator, Sequence
from functools import cached_property
from types import UnionType
from typing import Any

from cli.actions import record_given, warn_deprecated

FIELDS = "model_fields_given"  # namespace attribute: {model name: {field: (flag, value)}}


class RegistryChoices(Sequence[Any]):
    """The keys of ``module.attribute`` (a registry mapping or tuple), imported when first needed."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def load(self) -> Sequence[Any]:
        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    @cached_property
    def _keys(self) -> tuple[Any, ...]:
        return tuple(self.load())

    def __contains__(self, value: object) -> bool:
        return value in self._keys

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):  # type: ignore[override]
        return self._keys[index]


class Model:
    """A pydantic model named by module and class name, imported on first use."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"

    @cached_property
    def cls(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def field(self, name: str) -> Any:
        """The pydantic ``FieldInfo`` of ``name`` (KeyError names the model when it has no such field)."""
        try:
            return self.cls.model_fields[name]
        except KeyError:
            raise KeyError(f"{self!r} has no field {name!r}") from None

    def default(self, name: str) -> Any:
        """The field's default (its factory's value), or None when it has none (a required field)."""
        info = self.field(name)
        if info.default_factory is not None:
            return info.default_factory()
        return None if info.is_required() else info.default

    def literal_values(self, name: str) -> tuple[Any, ...]:
        """The field's Literal values (``X | None`` unwrapped), or () when it is not a Literal."""
        annotation = self.field(name).annotation
        if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
            literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal]
            annotation = literals[0] if len(literals) == 1 else None
        if typing.get_origin(annotation) is typing.Literal:
            return typing.get_args(annotation)
        return ()


class FieldChoices(RegistryChoices):
    """The Literal values of a model field (themselves derived from a registry), read when first needed."""

    def __init__(self, model: Model, field: str) -> None:
        self.model, self.field = model, field

    def load(self) -> Sequence[Any]:
        return self.model.literal_values(self.field)


class FieldOption(argparse.Action):
    """An option that fills ``model.field``: help, shown default and choices come from the field.

    With ``extend`` values add up over repeats (``--classes a --classes b``); ``replacement`` marks an old,
    hidden spelling that warns once. Recorded as typed (``cli.actions.given_options``) and as the field's value
    (``field_values``).
    """

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        model: Model,
        field: str,
        show_default: bool = True,
        extend: bool = False,
        replacement: str | None = None,
        help: str | None = None,  # noqa: A002 - argparse's name
        **kwargs: Any,
    ) -> None:
        self.model, self.field, self.show_default = model, field, show_default
        self.extend, self.replacement = extend, replacement
        kwargs.setdefault("default", None)
        super().__init__(option_strings, dest, help=help, **kwargs)

    @property
    def help(self) -> str | None:  # type: ignore[override]
        if self._help is not None:
            return self._help
        return (self.model.field(self.field).description or "").rstrip(".") or self.field.replace("_", " ")

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value

    @property
    def shown_default(self) -> Any:
        if not self.show_default:
            return None
        value = self.model.default(self.field)
        if value is None or value is False or value == {} or value == []:
            return None
        return ", ".join(map(str, value)) if isinstance(value, list | tuple) else value

    def field_value(self, values: Any) -> Any:
        return values

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        if self.replacement:
            warn_deprecated(option_string, self.replacement)
        else:
            record_given(parser, namespace, self.dest, option_string)
        if self.extend:
            values = [*(getattr(namespace, self.dest, None) or []), *values]
        setattr(namespace, self.dest, values)
        given = {key: dict(fields) for key, fields in getattr(namespace, FIELDS, {}).items()}
        flag = option_string or self.dest
        given.setdefault(repr(self.model), {})[self.field] = (self.replacement or flag, self.field_value(values))
        setattr(namespace, FIELDS, given)


class FieldFlag(FieldOption):
    """A flag that sets a boolean field: ``--x`` to True, ``--no-x`` to False."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.value = not option_strings[0].startswith("--no-")

    @property
    def shown_default(self) -> Any:
        return None  # a flag's help says what it does

    def field_value(self, values: Any) -> Any:
        return self.value

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        super().__call__(parser, namespace, True, option_string)


def field_option(
    parser: argparse.ArgumentParser | Any, flag: str, model: Model, field: str, **kwargs: Any
) -> argparse.Action:
    """``parser.add_argument(flag, ...)`` filling ``model.field`` (help and shown default from the field); pass
    ``choices=literal(model, field)`` for a Literal field, or a registry's ``RegistryChoices``."""
    return parser.add_argument(flag, action=FieldOption, model=model, field=field, **kwargs)


def field_flag(parser: argparse.ArgumentParser | Any, flag: str, model: Model, field: str, **kwargs: Any):
    """A flag for a boolean field: ``--x`` sets it, ``--no-x`` clears it."""
    return parser.add_argument(flag, action=FieldFlag, model=model, field=field, **kwargs)


def literal(model: Model, field: str) -> FieldChoices:
    """The Literal values of ``model.field`` as argparse choices."""
    return FieldChoices(model, field)


def field_values(args: argparse.Namespace, model: Model) -> dict[str, Any]:
    """``{field: value}`` of the options of ``model`` the user typed; the model's defaults fill the rest."""
    return {field: value for field, (_, value) in getattr(args, FIELDS, {}).get(repr(model), {}).items()}


def field_flags(args: argparse.Namespace, *models: Model) -> list[str]:
    """The flags the user typed for fields of ``models``, in the order of the models and fields."""
    given = getattr(args, FIELDS, {})
    return [flag for model in models for flag, _ in given.get(repr(model), {}).values()]
