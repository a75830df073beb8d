"""``whereabouts validate``: check configurations before they reach a node.

Accepts, in JSON or YAML:

- a network configuration (netconf) whose ``ipam.type`` is whereabouts;
- a configuration list (``plugins``): every plugin whose ipam is whereabouts is checked;
- a NetworkAttachmentDefinition (``spec.config`` holds a netconf or a conflist), several
  per file as YAML documents or a ``List``;
- the flat file ``whereabouts.conf`` (a bare ipam object).

Each is checked twice: against the JSON schema (``schema/ipam.schema.json``, with
jsonschema when it is installed) and by the plugin's own parser, which also does the
checks a schema cannot express (``range_start`` inside the range, gateway family, ...).
No host file is read and no datastore is contacted. jsonschema and PyYAML are imported
only here, never on the CNI path.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

from .config import parse_netconf
from .errors import InvalidConfigError, WhereaboutsError

SCHEMA_ID = "urn:whereabouts:schema:ipam"


def load_schema() -> dict[str, Any]:
    """The IPAM object's JSON schema, read from the package (works from the zipapp)."""
    import pkgutil

    data = pkgutil.get_data("whereabouts", "schema/ipam.schema.json")
    if data is None:  # pragma: no cover - a broken installation
        raise FileNotFoundError("whereabouts/schema/ipam.schema.json")
    schema: dict[str, Any] = json.loads(data)
    return schema


@lru_cache(maxsize=1)
def _validators() -> Optional[Tuple[Any, Any]]:
    """(ipam validator, netconf validator), or None without jsonschema."""
    try:
        from jsonschema import Draft202012Validator
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012
    except ImportError:
        return None
    schema = load_schema()
    registry = Registry().with_resource(SCHEMA_ID, DRAFT202012.create_resource(schema))
    ipam = Draft202012Validator(schema, registry=registry)
    netconf = Draft202012Validator({"$ref": f"{SCHEMA_ID}#/$defs/netconf"}, registry=registry)
    return ipam, netconf


def schema_available() -> bool:
    return _validators() is not None


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _schema_problems(error: Any, prefix: Sequence[Any]) -> List[str]:
    """Readable text for one jsonschema error (a few may come out of one)."""
    where = _path([*prefix, *error.absolute_path]) or "(top level)"
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if kind == "pattern":
        shown = instance if isinstance(instance, str) else json.dumps(instance)
        return [f"{where}: {shown!r} is not {schema.get('title', 'valid')}"]
    if kind == "additionalProperties":
        allowed = schema.get("properties", {})
        return [f"{where}.{key}: unknown key" for key in instance if key not in allowed]
    if kind == "required":
        missing = [key for key in error.validator_value if key not in instance]
        return [f"{where}.{key}: missing" if where != "(top level)" else f"{key}: missing"
                for key in missing]
    if kind == "type":
        return [f"{where}: must be of type {error.validator_value}, not {_json_type(instance)}"]
    if kind in ("enum", "const"):
        choices = error.validator_value if kind == "enum" else [error.validator_value]
        return [f"{where}: {instance!r} is not one of {', '.join(map(repr, choices))}"]
    if kind == "anyOf" and where.endswith("ipam"):
        return [f"{where}: no range configured: set range or ipRanges (or addresses)"]
    return [f"{where}: {error.message}"]


def _key_of(problem: str) -> str:
    return problem.split(": ", 1)[0]


def _check_netconf(conf: Mapping[str, Any], flat_file: bool = False) -> List[str]:
    """Schema and parser problems of one netconf (or of a bare ipam object)."""
    if flat_file:
        netconf = {"name": "flat-file", "cniVersion": "1.0.0",
                   "ipam": {"type": "whereabouts", **conf}}
    else:
        netconf = dict(conf)
    parsed: List[str] = []
    try:
        parse_netconf(json.dumps(netconf).encode(), flat_file_paths=[], env={},
                      require_ranges=not flat_file, read_host_files=False)
    except InvalidConfigError as exc:
        parsed = list(exc.problems)
    except WhereaboutsError as exc:
        parsed = [exc.msg]
    if flat_file:
        parsed = [p[len("ipam."):] if p.startswith("ipam.") else p for p in parsed]
    validators = _validators()
    extra: List[str] = []
    if validators is not None:
        validator = validators[0] if flat_file else validators[1]
        seen = {_key_of(p) for p in parsed}
        for error in validator.iter_errors(conf):
            for problem in _schema_problems(error, []):
                key = _key_of(problem)
                if not any(key == s or key.startswith((s + ".", s + "[")) or
                           s.startswith((key + ".", key + "[")) for s in seen):
                    extra.append(problem)
                    seen.add(key)
    return parsed + extra


def _is_whereabouts(conf: Any) -> bool:
    ipam = conf.get("ipam") if isinstance(conf, dict) else None
    return isinstance(ipam, dict) and ipam.get("type") == "whereabouts"


def _check_config(conf: Any, label: str) -> List[str]:
    """A netconf, a conflist or a flat file, already decoded."""
    if not isinstance(conf, dict):
        return [f"{label}must be a JSON object, not {_json_type(conf)}"]
    if "plugins" in conf:
        plugins = conf["plugins"]
        if not isinstance(plugins, list):
            return [f"{label}plugins: must be a list, not {_json_type(plugins)}"]
        problems: List[str] = []
        found = 0
        for index, plugin in enumerate(plugins):
            if not _is_whereabouts(plugin):
                continue
            found += 1
            merged = dict(plugin)
            # The runtime hands each plugin the list's name and cniVersion.
            for key in ("name", "cniVersion"):
                if key in conf:
                    merged[key] = conf[key]
                else:
                    merged.pop(key, None)
            kind = plugin.get("type", "?")
            problems += [f"{label}plugins[{index}] ({kind}): {p}" for p in _check_netconf(merged)]
        if not found:
            problems.append(f"{label}no plugin in this configuration list has ipam type "
                            f"whereabouts")
        return problems
    if "ipam" in conf or "name" in conf or "cniVersion" in conf:
        ipam = conf.get("ipam")
        if isinstance(ipam, dict) and "type" in ipam and ipam["type"] != "whereabouts":
            return [f"{label}ipam.type: {ipam['type']!r} is not whereabouts; nothing to "
                    f"validate"]
        return [f"{label}{p}" for p in _check_netconf(conf)]
    # A bare ipam object: the flat file.
    return [f"{label}{p}" for p in _check_netconf(conf, flat_file=True)]


def _check_k8s_object(obj: Mapping[str, Any], label: str) -> Tuple[List[str], int]:
    """(problems, number of configurations looked at) for one Kubernetes object."""
    kind = obj.get("kind")
    if kind == "List" and isinstance(obj.get("items"), list):
        problems: List[str] = []
        count = 0
        for index, item in enumerate(obj["items"]):
            if isinstance(item, dict):
                found, seen = _check_k8s_object(item, f"{label}items[{index}] ")
                problems += found
                count += seen
        return problems, count
    if kind != "NetworkAttachmentDefinition":
        return [], 0
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    here = f"{label}NetworkAttachmentDefinition {name}: "
    spec = obj.get("spec")
    config = spec.get("config") if isinstance(spec, dict) else None
    if not isinstance(config, str) or not config.strip():
        return [f"{here}spec.config: missing (a JSON string holding the network "
                f"configuration)"], 1
    try:
        conf = json.loads(config)
    except ValueError as exc:
        return [f"{here}spec.config: not valid JSON: {exc}"], 1
    return _check_config(conf, here), 1


def _documents(text: str) -> List[Any]:
    """Decode the input: JSON when it looks like JSON, else YAML (several documents)."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except ValueError as exc:
            raise _InputError(f"not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise _InputError("this is not JSON; install PyYAML to validate YAML") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise _InputError(f"not valid YAML: {exc}") from None


class _InputError(Exception):
    pass


def validate_document(text: str, *, filename: str = "") -> List[str]:
    """Validate one file's text; return its problems (empty when it is valid).

    Each problem names the file (when ``filename`` is given), the document or plugin
    and the key, e.g. ``nad.yaml: NetworkAttachmentDefinition default/a: ipam.range:
    ...``.
    """
    label = f"{filename}: " if filename else ""
    if not text.strip():
        return [f"{label}empty: no configuration to validate"]
    try:
        documents = _documents(text)
    except _InputError as exc:
        return [f"{label}{exc}"]
    problems: List[str] = []
    count = 0
    several = len(documents) > 1
    for index, doc in enumerate(documents):
        here = f"{label}document {index + 1}: " if several else label
        if isinstance(doc, dict) and "kind" in doc and "apiVersion" in doc:
            found, seen = _check_k8s_object(doc, here)
            problems += found
            count += seen
        else:
            problems += _check_config(doc, here)
            count += 1
    if count == 0:
        problems.append(f"{label}no NetworkAttachmentDefinition or network configuration "
                        f"found")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``whereabouts validate FILE [FILE...]``: 0 all valid, 1 problems, 2 unreadable."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="whereabouts validate",
        description="Check whereabouts network configurations, configuration lists, "
        "NetworkAttachmentDefinitions (JSON or YAML) and flat files offline.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="file to check ('-': stdin)")
    args = parser.parse_args(argv)
    if not schema_available():
        print("note: jsonschema is not installed; checking with the plugin's parser only",
              file=sys.stderr)
    status = 0
    for name in args.files:
        try:
            if name == "-":
                text = sys.stdin.read()
            else:
                with open(name, encoding="utf-8") as handle:
                    text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"{name}: cannot read: {reason}", file=sys.stderr)
            status = 2
            continue
        problems = validate_document(text, filename=name)
        for problem in problems:
            print(problem)
        if problems:
            status = max(status, 1)
        else:
            print(f"{name}: ok")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
