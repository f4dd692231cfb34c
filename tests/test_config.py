"""Every option is checked against its declared type, strictly, and trm_base_url against the URL rules.

The wrong-typed values are made from each field's annotation, so an option added later is covered without
editing this file; a type the check does not know is itself an error (see the last test).
"""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from sophiavl_verl.config import ConfigError, SophiaVLRewardConfig, TrustGRPOConfig, parse_trm_base_url

DECLARED = {"algorithm.trust_grpo": TrustGRPOConfig, "reward.reward_kwargs": SophiaVLRewardConfig}

#: Values of each type that are not of the others (strictly: True is no number, "false" no bool).
_SAMPLES = {bool: [True, False], int: [3], float: [0.5], str: ["false", "0.5"], type(None): [None]}
_OTHERS = [[1, 2], {"a": 1}]  # no option is a list or a mapping


def _wrong_values(cls: type) -> list[tuple[str, object]]:
    cases = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        annotation = hints[f.name]
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        kinds = set(typing.get_args(annotation) if union else (annotation,))
        if float in kinds:
            kinds.add(int)  # a YAML integer is a fine number
        wrong = [v for kind, values in _SAMPLES.items() if kind not in kinds for v in values] + _OTHERS
        cases += [(f.name, value) for value in wrong]
    return cases


@pytest.mark.parametrize(("prefix", "name", "value"), [
    (prefix, name, value) for prefix, cls in DECLARED.items() for name, value in _wrong_values(cls)
])
def test_every_option_refuses_a_value_of_another_type_naming_its_key(prefix, name, value):
    cls = DECLARED[prefix]
    with pytest.raises(ConfigError) as info:
        cls(**{name: value})
    assert info.value.key == f"{prefix}.{name}"
    assert str(info.value).startswith(f"{prefix}.{name} must be "), str(info.value)


@pytest.mark.parametrize(("cls", "options", "message"), [
    # The issue's cases: each was accepted, then misread (or raised in a Ray worker).
    (SophiaVLRewardConfig, {"require_format": "false"}, "reward.reward_kwargs.require_format must be true or false"),
    (TrustGRPOConfig, {"epsilon": True}, "algorithm.trust_grpo.epsilon must be a number, got True"),
    (TrustGRPOConfig, {"correct_threshold": True}, "algorithm.trust_grpo.correct_threshold must be a number"),
    (SophiaVLRewardConfig, {"trm_model": 123}, "reward.reward_kwargs.trm_model must be a string or null, got 123"),
    (SophiaVLRewardConfig, {"trm_api_key_env": None},
     "reward.reward_kwargs.trm_api_key_env must be a string, got None"),
    # More of the same class.
    (TrustGRPOConfig, {"anneal_steps": 2.0}, "algorithm.trust_grpo.anneal_steps must be an integer or null"),
    (TrustGRPOConfig, {"use_trust_weight": 1}, "algorithm.trust_grpo.use_trust_weight must be true or false"),
    (SophiaVLRewardConfig, {"timeout_s": "60"}, "reward.reward_kwargs.timeout_s must be a number"),
    (SophiaVLRewardConfig, {"max_concurrency": 8.0}, "reward.reward_kwargs.max_concurrency must be an integer"),
    (SophiaVLRewardConfig, {"clip_scores": "true"}, "reward.reward_kwargs.clip_scores must be true or false"),
])
def test_the_issues_wrong_types_are_refused(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls(**options)


def test_numbers_accept_integers_and_the_defaults_pass():
    assert TrustGRPOConfig(alpha=1, epsilon=0, correct_threshold=1).alpha == 1
    assert SophiaVLRewardConfig(timeout_s=5, deadline_s=10).timeout_s == 5
    for cls in DECLARED.values():
        cls()


def test_a_new_option_of_an_unchecked_type_is_a_bug_not_a_pass():
    @dataclasses.dataclass(frozen=True)
    class WithAList(TrustGRPOConfig):
        extra: list = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="WithAList.extra is declared <class 'list'>, which has no type check"):
        WithAList()


@pytest.mark.parametrize("alpha", [1e20, 1e3 + 1, float("inf")])
def test_alpha_is_bounded_so_the_float32_std_cannot_overflow(alpha):
    with pytest.raises(ConfigError, match=r"algorithm.trust_grpo.alpha must be a finite number in \[0, 1000\]"):
        TrustGRPOConfig(alpha=alpha)


# ------------------------------------------------------------------------------------------ trm_base_url

KEY = "reward.reward_kwargs.trm_base_url"


@pytest.mark.parametrize(("url", "normalised"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("HTTPS://TRM.Example.com/v1", "https://trm.example.com/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("http://trm_server:8000", "http://trm_server:8000"),
    ("http://host:08000/v1", "http://host:8000/v1"),
])
def test_a_good_base_url_is_normalised_once_for_every_user(url, normalised):
    assert parse_trm_base_url(url, KEY) == normalised
    assert SophiaVLRewardConfig(trm_base_url=url).trm_base_url == normalised
    from sophiavl_verl.thinking_reward import ThinkingRewardClient

    client = ThinkingRewardClient(url, "m")
    assert (client.base_url, client.url) == (normalised, normalised + "/chat/completions")


@pytest.mark.parametrize(("url", "message"), [
    ("http://h:8000/v1?api-version=x", "must not have a query"),
    ("http://h:8000/v1?", "must not have a query"),
    ("http://h:8000/v1#frag", "or fragment"),
    ("http://h:8000/v1 ", "must not contain whitespace"),
    (" http://h:8000/v1", "must not contain whitespace"),
    ("http://h:8000/v1\n", "must not contain whitespace"),
    ("http://h:8000/v 1", "must not contain whitespace"),
    ("http:///v1", "has no valid host"),
    ("http://:8000/v1", "has no valid host"),
    ("http://a..b/v1", "has no valid host"),
    ("http://[zz]/v1", "has no valid host"),
    ("http://h%40x/v1", "has no valid host"),
    ("http://h:0/v1", "has an invalid port"),
    ("http://h:65536/v1", "has an invalid port"),
    ("http://h:port/v1", "has an invalid port"),
    ("http://h:/v1", "has an invalid port"),
    ("ftp://h/v1", "must be an http"),
    ("http:/h/v1", "must be an http"),
    ("h:8000/v1", "must be an http"),
    (8000, "must be a string"),
])
def test_a_base_url_that_would_send_elsewhere_is_refused_naming_the_key(url, message):
    with pytest.raises(ConfigError, match=message) as info:
        SophiaVLRewardConfig(trm_base_url=url)
    assert info.value.key == KEY and str(info.value).startswith(KEY)


@pytest.mark.parametrize("url", [
    "http://user:s3cr3t-pw@host:8000/v1",
    "http://s3cr3t-pw@host/v1",
    "https://user:s3cr3t-pw@host",
    "http://user:s3cr3t-pw@/v1",
    "http://user:s3cr3t-pw@host:8000/v1 ",  # refused for its credentials first: no message echoes the URL
    "http://user:s3cr3t/pw@host/v1",
])
def test_credentials_in_the_url_are_refused_without_echoing_them(url):
    for build in (lambda: SophiaVLRewardConfig(trm_base_url=url), lambda: parse_trm_base_url(url, "--trm-url")):
        with pytest.raises(ConfigError, match=r"must not carry credentials \(user:password@\)") as info:
            build()
        assert "s3cr3t" not in str(info.value) and "user" not in str(info.value).replace("user:password", "")
