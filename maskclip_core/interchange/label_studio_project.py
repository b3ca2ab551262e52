"""Which Label Studio project holds a dataset's review, found the same way by every push and pull.

A dataset is known by ``dataset_key``: its URL normalised (a relative path, a trailing slash, ``file://`` or a
doubled ``/`` name the same dataset). Its project is titled ``maskclip <last two folders>`` (or ``--project``)
and its description names the key, so two datasets with the same folder name never share a project.
Label Studio has no unique titles, so two pushes at the same moment may each create one: each creator then
looks again and keeps the oldest project of the title, deleting its own if it is not that one, so both
pushes end in one project. Projects of the title left over from before are reported, not used.

The labeling config follows the dataset's categories, keeping labels someone added in the UI: annotations
may use them, and Label Studio would silently accept a config that drops them.
"""

from __future__ import annotations

import os
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from maskclip_core.interchange.label_studio import labeling_config
from maskclip_core.interchange.label_studio_client import LabelStudioError, is_missing

TITLE_MAX = 50  # Label Studio's project title column
DESCRIPTION_PREFIX = "maskclip-labeler dataset "


def dataset_key(dataset: str) -> str:
    """The dataset URL in one spelling: local paths absolute and normalised, remote ones without ``//`` or a
    trailing slash."""
    protocol, path = fsspec.core.split_protocol(dataset.strip())
    path = re.sub(r"/{2,}", "/", path)
    if protocol in (None, "file", "local"):
        return os.path.normpath(os.path.abspath(path))
    return f"{protocol}://{posixpath.normpath(path).strip('/')}"


def default_project_title(dataset: str) -> str:
    """``maskclip <last folders of the dataset URL>``, cut to Label Studio's 50 characters."""
    path = fsspec.core.split_protocol(dataset_key(dataset))[1].rstrip("/")
    tail = "/".join(path.split("/")[-2:]) or path
    title = f"maskclip {tail}"
    return title if len(title) <= TITLE_MAX else "maskclip …" + title[-(TITLE_MAX - len("maskclip …")) :]


def find_project(
    client: Any, name: str | None, dataset: str, *, label_config: str | None = None
) -> tuple[Any, bool, list[int]]:
    """(project, created, ids of other projects with its title and dataset): by id when ``name`` is a number,
    else by exact title (default from the dataset); created with ``label_config`` when there is none (pull
    passes none: it never creates)."""
    if name is not None and name.strip().isdigit():
        return client.projects.get(int(name)), False, []
    title = name or default_project_title(dataset)
    if len(title) > TITLE_MAX:
        raise LabelStudioError(f"project title {title!r} is longer than Label Studio's {TITLE_MAX} characters")
    key = dataset_key(dataset)
    ours, foreign = _titled(client, title, key)
    created = None
    if not ours:
        if foreign:
            raise LabelStudioError(
                f"Label Studio project {title!r} (id {foreign[0][0]}) holds another dataset ({foreign[0][1]}): "
                "pass --project with another title"
            )
        if label_config is None:
            raise LabelStudioError(
                f"no Label Studio project titled {title!r}: push the dataset first, or pass --project"
            )
        created = client.projects.create(title=title, description=DESCRIPTION_PREFIX + key, label_config=label_config)
        ours, _ = _titled(client, title, key)  # another push may have created one at the same moment
        ours = sorted({*ours, int(created.id)})
    if created is not None and created.id != ours[0]:  # the other push was first: its project is the one
        _delete_project(client, created.id)
        ours.remove(created.id)
        created = None
    return (created or client.projects.get(ours[0])), created is not None, ours[1:]


def _titled(client: Any, title: str, key: str) -> tuple[list[int], list[tuple[int, str]]]:
    """Ids of the projects titled ``title`` that may hold this dataset, and (id, dataset) of those that hold
    another one."""
    ours, foreign = [], []
    for project in client.projects.list(title=title):
        if project.title != title:
            continue
        described = (project.description or "").strip()
        if described.startswith(DESCRIPTION_PREFIX.strip()):
            other = described[len(DESCRIPTION_PREFIX.strip()) :].strip()
            if dataset_key(other) != key:
                foreign.append((int(project.id), other))
                continue
        ours.append(int(project.id))
    return sorted(ours), foreign


def _delete_project(client: Any, project_id: int) -> None:
    try:
        client.projects.delete(project_id)
    except Exception as exc:  # noqa: BLE001 - already gone (the other push cleaned up) is fine
        if not is_missing(exc):
            raise


def delete_new_project(client: Any, project_id: int) -> None:
    """Best effort: remove the project a failed first push created, so no empty project is left behind."""
    try:
        _delete_project(client, project_id)
    except Exception:  # noqa: BLE001, S110 - the push's own error is the one to report
        pass


def project_config(server_xml: str | None, categories: Sequence[Mapping[str, Any]], mode: str) -> tuple[str, list[str]]:
    """(labeling config of the categories, labels of ``server_xml`` kept beyond them): a label added in the UI
    stays, since annotations may use it."""
    names = {str(c["name"]) for c in categories}
    extra = [label for label in _label_values(server_xml) if label not in names]
    return labeling_config(categories, mode, extra_labels=extra), extra


def same_config(a: str | None, b: str | None) -> bool:
    return _normalized_xml(a) == _normalized_xml(b)


def _label_values(xml: str | None) -> list[str]:
    """The ``value`` of every ``<Label>`` in a labeling config, in order, once each."""
    try:
        root = ET.fromstring(xml or "<View/>")
    except ET.ParseError:
        return []
    values = [str(label.get("value")) for label in root.iter("Label") if label.get("value") is not None]
    return list(dict.fromkeys(values))


def _normalized_xml(xml: str | None) -> str:
    return "".join(line.strip() for line in (xml or "").splitlines())
