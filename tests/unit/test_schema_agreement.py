"""The JSON schema and the parser agree, on one corpus of configurations.

``tests/data/configs/valid/*.json`` must pass both; ``invalid/*.json`` must fail the
parser with a problem naming the key listed in ``expectations.txt``, and fail the schema
too unless the file is listed in ``semantic-only.txt`` (errors a schema cannot express,
such as ``range_start`` outside the range). The same corpus drives ``whereabouts
validate``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from whereabouts import config, validate
from whereabouts.config import parse_ip, parse_netconf, parse_network, parse_range
from whereabouts.errors import InvalidConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"
VALID = sorted((CONFIGS / "valid").glob("*.json"))
INVALID = sorted((CONFIGS / "invalid").glob("*.json"))
SCHEMA: Dict[str, Any] = validate.load_schema()


def _manifest_lines(name: str) -> List[str]:
    lines = (CONFIGS / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _expectations() -> Dict[str, Tuple[str, str]]:
    found: Dict[str, Tuple[str, str]] = {}
    for line in _manifest_lines("expectations.txt"):
        parts = line.split(None, 2)
        found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


EXPECT = _expectations()
SEMANTIC_ONLY = set(_manifest_lines("semantic-only.txt"))


def parser_problems(path: Path) -> List[str]:
    try:
        parse_netconf(path.read_bytes(), flat_file_paths=[], env={}, read_host_files=False)
    except InvalidConfigError as exc:
        return list(exc.problems)
    return []


def schema_errors(path: Path) -> List[str]:
    validators = validate._validators()
    assert validators is not None
    return [error.message for error in validators[1].iter_errors(json.loads(path.read_text()))]


# ---------------------------------------------------------------------------------------
# The corpus and its manifests


def test_corpus_is_large_enough() -> None:
    assert len(VALID) >= 15
    assert len(INVALID) >= 25
    assert len(SEMANTIC_ONLY) >= 5


def test_every_invalid_config_has_an_expectation_and_every_entry_a_file() -> None:
    names = {path.name for path in INVALID}
    assert set(EXPECT) == names
    assert names >= SEMANTIC_ONLY


def test_schema_is_a_valid_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_lists_exactly_the_keys_the_parser_accepts() -> None:
    assert set(SCHEMA["properties"]) == set(config._IPAM_KEYS)
    assert SCHEMA["additionalProperties"] is False
    entry = SCHEMA["$defs"]["rangeEntry"]
    assert set(entry["properties"]) == set(config._RANGE_KEYS)
    assert set(SCHEMA["properties"]["kubernetes"]["properties"]) == set(config._KUBERNETES_KEYS)
    assert set(SCHEMA["$defs"]["address"]["properties"]) == set(config._ADDRESS_KEYS)


def test_schema_enums_match_the_parser() -> None:
    props = SCHEMA["properties"]
    assert set(props["datastore"]["enum"]) == {"", *config.DATASTORES}
    assert set(props["log_level"]["enum"]) == {"", *config.LOG_LEVELS}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_config_passes_parser_and_schema(path: Path) -> None:
    assert parser_problems(path) == []
    assert schema_errors(path) == []
    assert validate.validate_document(path.read_text()) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_config_fails_parser_naming_the_key_and_schema_agrees(path: Path) -> None:
    key, text = EXPECT[path.name]
    found = parser_problems(path)
    assert any(p.startswith(f"{key}:") and text in p for p in found), found
    if path.name in SEMANTIC_ONLY:
        assert schema_errors(path) == [], "listed as semantic-only, yet the schema rejects it"
    else:
        assert schema_errors(path), "the schema accepts a config the parser rejects"
    reported = validate.validate_document(path.read_text(), filename=path.name)
    assert any(p.startswith(f"{path.name}: {key}:") for p in reported), reported


# ---------------------------------------------------------------------------------------
# The schema's address patterns accept exactly what the parser accepts


def _pattern(name: str) -> Callable[[str], bool]:
    compiled = re.compile(SCHEMA["$defs"][name]["pattern"])
    return lambda text: compiled.search(text) is not None


def _accepts(parse: Callable[[str], Any]) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return False
        return True

    return check


def _range_ok(text: str) -> bool:
    network = parse_range(text)[0]
    if network.max_prefixlen - network.prefixlen < 2:
        raise ValueError(text)
    return True


def _ip_or_cidr(text: str) -> Any:
    return parse_network(text) if "/" in text else parse_ip(text)


@st.composite
def address_text(draw: Any) -> str:
    address = draw(st.ip_addresses())
    if address.version == 4:
        octets = [draw(st.sampled_from(["", "0", "00"])) + part
                  for part in str(address).split(".")]
        return ".".join(octets)
    style = draw(st.sampled_from(["compressed", "exploded", "upper", "v4tail"]))
    if style == "exploded":
        return str(address.exploded)
    if style == "upper":
        return str(address).upper()
    if style == "v4tail":
        tail = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        head = str(ipaddress.IPv6Address(int(address) & ~0xFFFFFFFF)).rstrip(":")
        return f"{head or ':'}:{tail}" if head.endswith(":") or not head else f"{head}::{tail}"
    return str(address)


NOISE = st.text(alphabet="0123456789abcdefABCDEFgx:./-% ", max_size=48)
ADDRESSY = st.one_of(
    address_text(),
    st.builds(lambda a, p: f"{a}/{p}", address_text(), st.integers(0, 140).map(str)),
    st.builds(lambda a, b, p: f"{a}-{b}/{p}", address_text(), address_text(),
              st.integers(0, 130).map(str)),
    NOISE,
)


@given(ADDRESSY)
@example("1.2.3.4\t")
@example("1:2:3:4:5:6:7::")
@example("1::2:3:4:5:6:7")
@example("1:2:3:4::5:6:7:8")
@example("::ffff:010.1.2.3")
@example("fe80::1%eth0")
def test_ip_pattern_agrees_with_the_parser(text: str) -> None:
    assert _pattern("ip")(text) == _accepts(parse_ip)(text)


@given(ADDRESSY)
@example("10.0.0.0/033")
@example("10.0.0.0/255.255.255.0")
def test_cidr_pattern_agrees_with_the_parser(text: str) -> None:
    assert _pattern("cidr")(text) == _accepts(parse_network)(text)


@given(ADDRESSY)
def test_ip_or_cidr_pattern_agrees_with_the_parser(text: str) -> None:
    assert _pattern("ipOrCidr")(text) == _accepts(_ip_or_cidr)(text)


@given(ADDRESSY)
@example("10.0.0.0/31")
@example("10.0.0.0/30")
@example("fd00::/126")
@example("fd00::/127")
@example("10.0.0.5-fd00::9/64")
def test_range_pattern_agrees_with_the_parser(text: str) -> None:
    assert _pattern("range")(text) == _accepts(_range_ok)(text)


def test_network_name_pattern_agrees_with_the_parser() -> None:
    accepts = _pattern_of(SCHEMA["properties"]["network_name"]["pattern"])
    for name in ["", "blue", "blue-", "b.l.u.e", "0net", "a-b.c-d", "Blue", "blue_net",
                 "-blue", "blue.", "a..b", "a.-b", "a-.b", "x y", "é"]:
        ok = True
        try:
            parse_netconf(json.dumps({"name": "n", "ipam": {
                "type": "whereabouts", "range": "10.0.0.0/24", "network_name": name}}).encode(),
                flat_file_paths=[])
        except InvalidConfigError:
            ok = False
        assert accepts(name) == ok, name


def _pattern_of(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda text: compiled.search(text) is not None


# ---------------------------------------------------------------------------------------
# whereabouts validate


NAD = """\
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: {name}
  namespace: team-a
spec:
  config: '{config}'
"""


def nad(name: str, ipam: Dict[str, Any]) -> str:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": "eth0",
            "ipam": {"type": "whereabouts", **ipam}}
    return NAD.format(name=name, config=json.dumps(conf))


def test_valid_nad_yaml_has_no_problems() -> None:
    assert validate.validate_document(nad("good", {"range": "10.0.0.0/24"})) == []


def test_problems_in_a_multi_document_yaml_name_the_document_and_the_object() -> None:
    text = nad("good", {"range": "10.0.0.0/24"}) + "---\n" + nad(
        "bad", {"range": "10.0.0.0/24", "range_start": "10.1.0.1"}) + "---\n"
    found = validate.validate_document(text, filename="nads.yaml")
    assert found == ["nads.yaml: document 2: NetworkAttachmentDefinition team-a/bad: "
                     "ipam.range_start: 10.1.0.1 is outside range 10.0.0.0/24"]


def test_nad_in_json_with_a_conflist_checks_each_whereabouts_plugin() -> None:
    conflist = {"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "macvlan", "master": "eth0",
         "ipam": {"type": "whereabouts", "range": "10.0.0.0/24", "rangeStart": "10.0.0.5"}},
        {"type": "tuning", "sysctl": {}},
    ]}
    obj = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "chain"}, "spec": {"config": json.dumps(conflist)}}
    found = validate.validate_document(json.dumps(obj))
    assert found == ["NetworkAttachmentDefinition default/chain: plugins[0] (macvlan): "
                     "ipam.rangeStart: unknown key (host-local spelling?), "
                     "did you mean range_start?"]


def test_conflist_plugins_inherit_the_list_name() -> None:
    conflist = {"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "bridge", "ipam": {"type": "whereabouts", "range": "10.0.0.0/24"}}]}
    assert validate.validate_document(json.dumps(conflist)) == []


def test_conflist_without_a_whereabouts_plugin_is_a_problem() -> None:
    conflist = {"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local"}}]}
    (found,) = validate.validate_document(json.dumps(conflist))
    assert "no plugin in this configuration list has ipam type whereabouts" in found


def test_nad_without_config_or_with_bad_json_is_a_problem() -> None:
    bare = "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n" \
           "metadata: {name: x}\nspec: {}\n"
    assert "spec.config: missing" in validate.validate_document(bare)[0]
    broken = bare.replace("spec: {}", "spec: {config: '{nope'}")
    assert "spec.config: not valid JSON" in validate.validate_document(broken)[0]


def test_flat_file_is_validated_without_requiring_a_range() -> None:
    flat = {"datastore": "kubernetes", "configuration_path": "/etc/cni/net.d/whereabouts.d",
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
            "reconciler_cron_expression": "30 4 * * *"}
    assert validate.validate_document(json.dumps(flat)) == []
    flat["log_level"] = "loud"
    (found,) = validate.validate_document(json.dumps(flat), filename="whereabouts.conf")
    assert found.startswith("whereabouts.conf: log_level: loud is not one of")


def test_schema_only_problems_are_reported_once_each() -> None:
    found = validate.validate_document(json.dumps({"name": "n", "ipam": {
        "type": "whereabouts", "range": "10.0.0.0/24", "exclude": ["10.0.0.0/33"]}}))
    assert len(found) == 1 and found[0].startswith("ipam.exclude[0]: ")


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"),
    ("{nope", "not valid JSON"),
    ("a: [unclosed", "not valid YAML"),
    ("kind: ConfigMap\napiVersion: v1\n", "no NetworkAttachmentDefinition"),
])
def test_unusable_input_is_a_problem(text: str, expected: str) -> None:
    (found,) = validate.validate_document(text, filename="f")
    assert found.startswith("f: ") and expected in found


def test_yaml_without_pyyaml_asks_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    (found,) = validate.validate_document(nad("x", {"range": "10.0.0.0/24"}))
    assert "install PyYAML to validate YAML" in found


def test_main_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(nad("good", {"range": "10.0.0.0/24"}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "n", "ipam": {"type": "whereabouts", "range": "x"}}))
    assert validate.main([str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert validate.main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: ok"
    assert out[1].startswith(f"{bad}: ipam.range: x is not a CIDR")
    assert validate.main([str(bad), str(tmp_path / "missing.json")]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'missing.json'}: cannot read" in captured.err


def test_main_reads_stdin(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(nad("x", {"range": "10.0.0.0/24"})))
    assert validate.main(["-"]) == 0
    assert capsys.readouterr().out == "-: ok\n"


def test_the_cni_path_imports_neither_jsonschema_nor_yaml() -> None:
    code = textwrap.dedent("""
        import sys
        from whereabouts.config import parse_netconf
        parse_netconf(b'{"name": "n", "ipam": {"type": "whereabouts", "range": "10.0.0.0/24"}}',
                      flat_file_paths=[])
        import whereabouts.validate
        bad = [m for m in ("jsonschema", "yaml", "referencing", "difflib") if m in sys.modules]
        print(",".join(bad))
    """)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == ""
