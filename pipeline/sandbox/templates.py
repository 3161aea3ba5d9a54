"""The sandbox's message templates: the defaults, reading configured ones, and rendering a message body.

v3 sends name a template by id or name and must supply every variable it declares; ``GET /v3/templates/{id}``
describes one. The defaults let the sample campaign run as it is: its template id is ``order_shipped``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.sandbox.exchange import is_guid

CHANNELS = ("sms", "whatsapp", "rcs")
STATUSES = ("APPROVED", "PENDING", "REJECTED")
_KEYS = ("id", "name", "status", "variables", "channels")

DEFAULT_TEMPLATES: tuple[dict[str, Any], ...] = (
    {
        "id": "7ba7b820-9dad-11d1-80b4-00c04fd430c8",
        "name": "order_shipped",
        "status": "APPROVED",
        "variables": ["name", "order_id", "carrier"],
        "channels": ["sms", "whatsapp"],
    },
    # not yet approved: sending it must fail, so a client's check of the status can be tried
    {
        "id": "7ba7b821-9dad-11d1-80b4-00c04fd430c8",
        "name": "order_delayed",
        "status": "PENDING",
        "variables": ["name", "order_id"],
        "channels": ["sms"],
    },
)


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    name: str
    status: str
    variables: tuple[str, ...]
    channels: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """The ``data`` of ``GET /v3/templates/{id}``."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "variables": list(self.variables),
            "channels": list(self.channels),
            "category": "UTILITY",  # the only kind the sandbox has: no marketing consent rules to imitate
        }

    def render(self, parameters: Mapping[str, str]) -> str:
        """The text a recipient would get: the template's name, then each declared variable's value."""
        values = ", ".join(f"{name}={parameters[name]}" for name in self.variables)
        return f"{self.name}: {values}" if values else self.name


class TemplateCatalogue:
    """The templates a sandbox knows, found by id (any case) or by exact name."""

    def __init__(self, raw: Sequence[Mapping[str, Any]] | None) -> None:
        entries = DEFAULT_TEMPLATES if raw is None else raw
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            raise ValueError("templates must be a list of template dicts or None")
        self._by_id: dict[str, Template] = {}
        self._by_name: dict[str, Template] = {}
        for index, entry in enumerate(entries):
            template = _read_template(f"templates[{index}]", entry)
            if template.id.lower() in self._by_id:
                raise ValueError(f"templates[{index}].id {template.id} is used by another template")
            if template.name in self._by_name:
                raise ValueError(f"templates[{index}].name {template.name!r} is used by another template")
            self._by_id[template.id.lower()] = template
            self._by_name[template.name] = template

    def by_id(self, template_id: str) -> Template | None:
        return self._by_id.get(template_id.lower())

    def by_name(self, name: str) -> Template | None:
        return self._by_name.get(name)


def _read_template(where: str, entry: object) -> Template:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict with keys {', '.join(_KEYS)}")
    unknown = sorted(str(key) for key in entry if key not in _KEYS)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known: {', '.join(_KEYS)}")
    template_id, name = entry.get("id"), entry.get("name")
    if not is_guid(template_id):
        raise ValueError(f"{where}.id must be a GUID, got {template_id!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name must be a non-empty string")
    status = entry.get("status", "APPROVED")
    if status not in STATUSES:
        raise ValueError(f"{where}.status must be one of {', '.join(STATUSES)}, got {status!r}")
    variables = _read_names(f"{where}.variables", entry.get("variables", []), None)
    channels = _read_names(f"{where}.channels", entry.get("channels", ["sms"]), CHANNELS)
    if not channels:
        raise ValueError(f"{where}.channels must name at least one of {', '.join(CHANNELS)}")
    return Template(str(template_id), name, str(status), variables, channels)


def _read_names(where: str, value: object, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} names an entry twice")
    if allowed is not None and not set(value) <= set(allowed):
        raise ValueError(f"{where} may only name {', '.join(allowed)}")
    return tuple(value)
