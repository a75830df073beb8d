"""The kubeconfig YAML subset parser agrees with PyYAML on what YAML emitters write."""

from __future__ import annotations

from typing import Any

import pytest
import yaml  # PyYAML: a dev dependency, the reference these tests compare against
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whereabouts.kube.yamlsubset import YAMLError, loads

# Scalars PyYAML writes in every style: any text except what YAML itself cannot carry
# unescaped in all styles (surrogates, BOM, the Unicode line separators).
_NOT_SCALAR: Any = ("Cs",)
_NOT_KEY: Any = ("Cs", "Cc", "Zl", "Zp")
_chars = st.characters(
    blacklist_categories=_NOT_SCALAR, blacklist_characters="\x85\u2028\u2029\ufeff"
)
_key_chars = st.characters(
    blacklist_categories=_NOT_KEY, blacklist_characters="\x85\u2028\u2029\ufeff"
)
TEXT = st.text(_chars, max_size=30)
KEYS = st.text(_key_chars, min_size=1, max_size=12)


def trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)
        ),
        max_leaves=20,
    )


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    trees(st.one_of(TEXT, st.none())),
    st.sampled_from([{}, {"width": 20}, {"default_flow_style": True}, {"indent": 4}]),
    st.booleans(),
)
def test_agrees_with_pyyaml_on_plain_emitter_output(value: Any, options: Any, flag: bool) -> None:
    doc = yaml.safe_dump(value, allow_unicode=flag, explicit_start=flag, **options)
    assert loads(doc) == yaml.safe_load(doc)


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    trees(TEXT),
    st.sampled_from(['"', "'", "|", ">"]),
    st.sampled_from([80, 10]),
    st.booleans(),
)
def test_agrees_with_pyyaml_on_every_scalar_style(
    value: Any, style: str, width: int, flag: bool
) -> None:
    doc = yaml.safe_dump(value, default_style=style, width=width, allow_unicode=flag)
    assert loads(doc) == yaml.safe_load(doc)


KUBECTL_STYLE = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    server: https://127.0.0.1:6443
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    namespace: whereabouts
    user: kind-kind
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      args:
      - token
      - --cluster-name   # trailing comment
      - "my cluster"
      command: aws
      env: null
      interactiveMode: IfAvailable
      provideClusterInfo: false
"""


def test_kubectl_layout() -> None:
    assert loads(KUBECTL_STYLE) == _strings(yaml.safe_load(KUBECTL_STYLE))


def test_scalars_stay_text() -> None:
    doc = loads("a: no\nb: 012\nc: 1.0\nd: true\ne: ~\nf:\ng: 'null'\nh: \"\"\n")
    assert doc == {
        "a": "no",
        "b": "012",
        "c": "1.0",
        "d": "true",
        "e": None,
        "f": None,
        "g": "null",
        "h": "",
    }


def test_block_scalars_and_folding() -> None:
    doc = "lit: |\n  a\n   b\n\nfold: >-\n  one\n  two\n\n  three\nkeep: |+\n  x\n\nend: 1\n"
    assert loads(doc) == yaml.safe_load(doc.replace("end: 1", "end: '1'"))


def test_comments_markers_and_bom() -> None:
    doc = "\ufeff# head\n---\n# c\nk: v # tail\n...\n"
    assert loads(doc) == {"k": "v"}
    assert loads("") is None
    assert loads("# nothing\n") is None


@pytest.mark.parametrize(
    "doc",
    [
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "? complex\n: value\n",
        "a: 1\n---\nb: 2\n",
        "a:\n\tb: 1\n",
        "a: b: c\n",
        "a: 'unterminated\n",
        "a: [1, 2\n",
        "a: 1\n  b: 2\n",
    ],
)
def test_unsupported_or_invalid_is_an_error_naming_the_line(doc: str) -> None:
    with pytest.raises(YAMLError) as info:
        loads(doc)
    assert info.value.line >= 1


def _strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v) for v in value]
    return (
        None if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
    )
