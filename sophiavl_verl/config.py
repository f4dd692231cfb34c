"""Options of the plugin, documented and validated in one place.

Each option is declared once, with :func:`option`: its type, its default, its doc (``metadata["help"]``) and,
for a closed set, its allowed values (``metadata["choices"]``). The options tables of docs/options.md
(``scripts/docs_tables.py``) and the audit's flags are made from these declarations. Validation checks
every option against its declared type first, strictly (no bool for a number, no string for a bool, null
only where declared), then its range.

``TrustGRPOConfig`` is read from ``algorithm.trust_grpo`` of a verl config. Validation runs inside
verl's own ``validate_config`` (the adapter wraps it), i.e. in the driver before Ray or any GPU
worker starts; every error names the offending key.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sophiavl_verl.annealing import get_schedule
from sophiavl_verl.errors import ConfigError

__all__ = ["TRUST_GRPO", "MAX_ALPHA", "TrustGRPOConfig", "SophiaVLRewardConfig", "ConfigError", "is_trust_grpo",
           "option", "parse_trm_base_url"]

#: The name users give to ``algorithm.adv_estimator``.
TRUST_GRPO = "trust_grpo"

UNIFORM_GROUP_POLICIES = ("skip", "trust")
#: Largest α accepted. The paper uses 0.3; far beyond 1e3 the thinking term dwarfs R^o and, near 1e19,
#: the group std of the float32 rewards (verl's GRPO precision) overflows and every advantage becomes 0.
MAX_ALPHA = 1e3


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """One option's declaration: its default, its doc (``metadata["help"]``) and, if closed, its allowed values.

    The README's options tables, the audit's flags and the validation read these (``dataclasses.fields``).
    """
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    return field(default=default, metadata=metadata)


class _Options:
    """Base of the options dataclasses: each option is checked against its declaration (type, then choices),
    then against the rules of its class (:meth:`_check`)."""

    _prefix: str  # where the options live in verl's config; every error names ``<_prefix>.<option>``

    def __post_init__(self) -> None:
        _check_declared_types(self)
        _check_choices(self)
        self._check(self._prefix)

    def _check(self, key: str) -> None:
        """The ranges and rules beyond the declared types and choices; ``key`` is :attr:`_prefix`."""
        raise NotImplementedError


@dataclass(frozen=True)
class TrustGRPOConfig(_Options):
    """Options of the ``trust_grpo`` advantage estimator (``algorithm.trust_grpo.*``); each documented where
    declared."""

    alpha: float = option(0.3, "Weight α of the thinking reward in Eq. 5 (the paper: 0.3), a number in "
                          f"[0, {MAX_ALPHA:g}]; 0 gives exactly verl's GRPO advantages.")
    schedule: str = option("exp", "Annealing schedule of Eq. 5: exp (the paper's e^(-step/T)), linear, cosine, "
                           "constant (no annealing), or a name added with sophiavl_verl.annealing.register_schedule.")
    anneal_steps: int | None = option(None, "T of the schedule, an integer > 0; null = the run's total training "
                                      "steps, as in the paper (the authors' released config used 12000, a much "
                                      "milder decay).")
    correct_threshold: float = option(0.5, "A response is correct when its outcome reward R^o is at least this; "
                                      "in (0, 1].")
    uniform_groups: str = option("skip", "What a group lacking a scored correct or a scored wrong response gets: "
                                 "skip = no thinking term, trust = γ = 1 (the reference code, whose only groups "
                                 "without a thinking term are those query_policy=official does not score).",
                                 choices=UNIFORM_GROUP_POLICIES)
    use_trust_weight: bool = option(True, "false forces γ = 1 for every response with a thinking reward "
                                    "(Table 3's \"w/o trust weight\" ablations).")
    epsilon: float = option(1e-6, "Added to the group std in Eq. 6, as verl's GRPO does; a finite number >= 0.")
    _prefix: str = field(default="algorithm.trust_grpo", repr=False, compare=False)

    def _check(self, key: str) -> None:
        _require(0 <= self.alpha <= MAX_ALPHA, f"{key}.alpha",
                 f"must be a finite number in [0, {MAX_ALPHA:g}], got {self.alpha}")
        try:
            get_schedule(self.schedule)
        except ValueError as e:
            raise ConfigError(f"{key}.schedule: {e}", key=f"{key}.schedule") from None
        if self.anneal_steps is not None:
            _require(self.anneal_steps > 0, f"{key}.anneal_steps", f"(T) must be > 0, got {self.anneal_steps}")
        _require(0 < self.correct_threshold <= 1, f"{key}.correct_threshold",
                 f"must be in (0, 1], got {self.correct_threshold!r}")
        _require(math.isfinite(self.epsilon) and self.epsilon >= 0, f"{key}.epsilon",
                 f"must be a finite number >= 0, got {self.epsilon!r}")

    @classmethod
    def from_algorithm_config(cls, algorithm: Mapping[str, Any] | None) -> TrustGRPOConfig:
        """Build from verl's ``algorithm`` config node (a DictConfig or dict); missing keys use defaults.

        Raises:
            ConfigError: On an unknown key or an invalid value, naming ``algorithm.trust_grpo.<key>``.
        """
        return cls(**_known_options(cls, algorithm, "trust_grpo", "algorithm.trust_grpo"))

    def anneal_total_steps(self, total_training_steps: int | None) -> int:
        """T of the schedule: ``anneal_steps`` if set, else the run's total training steps."""
        total = self.anneal_steps if self.anneal_steps is not None else total_training_steps
        if total is None or total <= 0:
            raise ConfigError(
                f"{self._prefix}.anneal_steps is null and the run's total training steps are unknown "
                f"({total_training_steps!r}); set {self._prefix}.anneal_steps"
            )
        return int(total)


def is_trust_grpo(algorithm: Mapping[str, Any] | None) -> bool:
    """Whether ``algorithm.adv_estimator`` selects this plugin's estimator."""
    estimator = (algorithm or {}).get("adv_estimator")
    return getattr(estimator, "value", estimator) == TRUST_GRPO


def _known_options(cls: type, parent: Mapping[str, Any] | None, name: str, prefix: str) -> dict[str, Any]:
    """The ``name`` block of a config node as keyword arguments of ``cls``; an unknown key is an error."""
    options = dict((parent or {}).get(name) or {})
    known = {f.name for f in fields(cls) if not f.name.startswith("_")}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; known keys: {sorted(known)}")
    return options


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML and JSON give bools where a user meant a flag)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key} {message}", key=key)


#: What a value of each declared type must be (strictly: a bool is no number, a string no bool; YAML and
#: JSON give these types, so an option never needs a conversion). An option of another type is refused
#: when its class is first validated, so a new option cannot go unchecked.
_TYPE_CHECKS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", is_int),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    type(None): ("null", lambda v: v is None),
}


@functools.cache
def _declared_types(cls: type) -> dict[str, tuple[type, ...]]:
    """The types each public option of ``cls`` is declared with (``int | None`` -> ``(int, NoneType)``).

    Raises:
        TypeError: For an option declared with a type :data:`_TYPE_CHECKS` has no check for (a bug).
    """
    hints = typing.get_type_hints(cls)  # the annotations are strings (from __future__ import annotations)
    declared: dict[str, tuple[type, ...]] = {}
    for f in fields(cls):
        if f.name.startswith("_"):
            continue
        annotation = hints[f.name]
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)  # int | None, Optional[int]
        declared[f.name] = typing.get_args(annotation) if union else (annotation,)
        if any(kind not in _TYPE_CHECKS for kind in declared[f.name]):
            raise TypeError(f"{cls.__name__}.{f.name} is declared {annotation}, which has no type check")
    return declared


def _check_declared_types(options: Any) -> None:
    """Each declared option holds a value of its annotated type (``float`` accepts an integer, nothing else).

    Raises:
        ConfigError: Naming ``<prefix>.<option>``, what it must be and what it got.
        TypeError: For an option declared with a type :data:`_TYPE_CHECKS` has no check for (a bug).
    """
    for name, kinds in _declared_types(type(options)).items():
        value = getattr(options, name)
        _require(any(_TYPE_CHECKS[kind][1](value) for kind in kinds), f"{options._prefix}.{name}",
                 f"must be {' or '.join(_TYPE_CHECKS[kind][0] for kind in kinds)}, got {value!r}")


def _check_choices(options: Any) -> None:
    """Each option declared with ``choices`` holds one of them."""
    for f in fields(options):
        choices = f.metadata.get("choices")
        if choices is not None:
            value = getattr(options, f.name)
            _require(value in choices, f"{options._prefix}.{f.name}", f"must be one of {choices}, got {value!r}")


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")


def parse_trm_base_url(url: Any, key: str) -> str:
    """The thinking reward model's base URL, checked once and normalised; every request is sent under it.

    Rules: ``http`` or ``https``; a host (a DNS name, an IPv4 address or a bracketed IPv6 address); a port,
    if any, in 1..65535; a path (``/v1``), trailing slashes dropped. Refused: whitespace or control
    characters anywhere, a query (``?...``) or fragment (``#...``), which requests would silently drop, and
    credentials (``user:password@``), refused without echoing them: the API key goes in the environment
    variable named by ``trm_api_key_env``.

    Args:
        url: The URL as configured.
        key: How errors name the option (``reward.reward_kwargs.trm_base_url``, ``--trm-url``).

    Returns:
        ``scheme://host[:port]/path`` with the scheme and host lower-cased and no trailing slash.

    Raises:
        ConfigError: Naming ``key`` and the rule broken.
    """
    _require(isinstance(url, str), key, f"must be a string, got {url!r}")
    key_env = f"{key.rpartition('.')[0]}.trm_api_key_env" if "." in key else "trm_api_key_env"  # the sibling option
    _require("@" not in url, key, "must not carry credentials (user:password@); put the API key in the "
             f"environment variable named by {key_env} (default {SophiaVLRewardConfig.trm_api_key_env})")
    _require(url.isprintable() and not any(c.isspace() for c in url), key,
             f"must not contain whitespace or control characters, got {url!r}")
    _require("?" not in url and "#" not in url, key,
             f"must not have a query (?...) or fragment (#...): requests would drop it, got {url!r}")
    _require(url.lower().startswith(("http://", "https://")), key,
             f"must be an http(s) URL like http://host:8000/v1, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        valid_host = (ipaddress.ip_address(host).version == 6 if parts.netloc.startswith("[")
                      else all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")))
    except ValueError:  # urlsplit and ipaddress refuse a bracketed host that is no IPv6 address
        valid_host = False
    _require(valid_host, key, f"has no valid host (http://host:8000/v1), got {url!r}")
    try:
        port = parts.port
    except ValueError:  # not a number, or not in 0..65535
        port = 0
    _require(port != 0 and not parts.netloc.endswith(":"), key, f"has an invalid port (1-65535), got {url!r}")
    netloc = parts.netloc.lower() if port is None else f"{parts.netloc.rpartition(':')[0].lower()}:{port}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


#: Thinking-reward-model query policies of the ``sophiavl`` reward manager.
QUERY_POLICIES = ("all", "skip_uniform", "official")
#: Layouts of the thinking-reward-model request (``sophiavl_verl.thinking_reward``).
TRM_PROMPTS = ("paper", "reference")

#: The ``extra_info`` key that marks a dataset row's split, and its values that mean validation. The
#: ``sophiavl`` reward manager never makes a validation sample wait for its group.
SPLIT_KEY = "split"
VALIDATION_SPLITS = ("val", "validation", "test")
#: Largest image file (or embedded image) that data preparation reads, checked before reading it.
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SophiaVLRewardConfig(_Options):
    """Options of the ``sophiavl`` reward manager (``reward.reward_kwargs.*``); each documented where declared."""

    trm_base_url: str | None = option(
        None, "Hosting mode B: an external OpenAI-compatible endpoint, http://host:port/v1 (e.g. vllm serve): "
        "http or https, a host, a path; no query, fragment, whitespace or user:password@ (the key goes in "
        "trm_api_key_env). "
        "null = mode A: the reward model verl serves in the Ray cluster (reward.reward_model.enable=True), reached "
        "through verl's reward router.")
    trm_model: str | None = option(None, "Model name sent in requests; null = reward.reward_model.model_path.")
    trm_api_key_env: str = option("SOPHIAVL_TRM_API_KEY",
                                  "Environment variable holding the endpoint's API key (never logged).")
    trm_prompt: str = option(
        "paper", "Layout of the TRM request. paper: Table 4's wording, the images before the text, the question "
        "from extra_info.question. reference: what the authors' RL run sent (their markdown variant of Table 4, "
        "the text before the first image only, '<image> ' before the policy's decoded prompt, $ removed from the "
        "response, no max_tokens). Which one the released TRM was trained on is not published.",
        choices=TRM_PROMPTS)
    query_policy: str = option(
        "skip_uniform", "Which responses are sent to the TRM. all: every one (the paper). skip_uniform: none of a "
        "group whose outcomes are all correct or all wrong (under uniform_groups=skip they get no thinking term "
        "anyway). official: the reference code's rule (no request for a group with every R^o >= 0.9 or every "
        "R^o <= 0.1; R^t = 0 without a request when R^o < 0.2).",
        choices=QUERY_POLICIES)
    max_concurrency: int = option(64, "Concurrent TRM requests (and pooled keep-alive connections) per reward "
                                  "worker process, an integer >= 1.")
    timeout_s: float = option(60.0, "Timeout of one request, seconds.")
    max_retries: int = option(5, "Retries of a request that timed out, failed to connect, or got 5xx / 429 "
                              "(exponential backoff with jitter).")
    deadline_s: float = option(300.0, "Longest one response's thinking reward may take, seconds, from the "
                               "manager's request to a score or NaN: waiting for a concurrency slot, retries, backoff "
                               "and Retry-After included.")
    breaker_failures: int = option(16, "After this many consecutive failed requests (timeouts, connection errors, "
                                   "5xx) the circuit breaker opens: for breaker_cooldown_s nothing is sent and "
                                   "responses get NaN at once (circuit_open); then one small request probes the "
                                   "TRM. 0 = no breaker.")
    breaker_cooldown_s: float = option(30.0, "How long the open breaker fails fast before it probes, seconds.")
    max_reply_bytes: int = option(
        2**20, "Largest TRM reply read, in bytes after decompression (a score is a few KB); reading stops past "
        "it and the response's thinking reward is missing (bad_response, not retried). An integer >= 1.")
    clip_scores: bool = option(False, "true: clip a TRM reply outside [0, 1] into [0, 1] (the reference code). "
                               "false: such a reply is no judgement of the reasoning; it is missing (NaN, counted "
                               "as out_of_range).")
    max_image_pixels: int | None = option(
        None, "Downscale an image with more pixels than this before sending it to the TRM, keeping its aspect "
        "ratio (the reference's rule; its EasyR1 data capped images at 4194304 pixels), re-encoded as PNG and "
        "counted as images_downscaled. null: images are sent as they are.")
    group_wait_s: float = option(
        120.0, "Longest a response waits for the rest of its group before a skip policy is decided, seconds; "
        "after it the response is scored as one of an incomplete group (as under all; official keeps its "
        "R^o < 0.2 rule), never dropped.")
    group_idle_s: float = option(
        30.0, "A waiting response is also released when no response at all has reached the group board for this "
        "long, seconds (generation is over, or only stragglers remain). Validation samples never wait: rows whose "
        f"extra_info.{SPLIT_KEY} is {', '.join(VALIDATION_SPLITS)} (sophiavl-verl data rl --val-size writes it), "
        "and reward inputs whose meta_info[\"validate\"] is true.")
    require_format: bool = option(True, "Gate the outcome reward on the <think>...</think><answer>...</answer> "
                                  "format (the reference code): a response without it scores 0.")
    _prefix: str = field(default="reward.reward_kwargs", repr=False, compare=False)

    def _check(self, key: str) -> None:
        _require(self.max_concurrency >= 1, f"{key}.max_concurrency",
                 f"must be an integer >= 1, got {self.max_concurrency!r}")
        _require(self.max_retries >= 0, f"{key}.max_retries", f"must be an integer >= 0, got {self.max_retries!r}")
        _require(self.breaker_failures >= 0, f"{key}.breaker_failures",
                 f"must be an integer >= 0, got {self.breaker_failures!r}")
        _require(is_int(self.max_reply_bytes) and self.max_reply_bytes >= 1, f"{key}.max_reply_bytes",
                 f"must be an integer >= 1, got {self.max_reply_bytes!r}")
        for name in ("timeout_s", "group_wait_s", "group_idle_s", "deadline_s", "breaker_cooldown_s"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, f"{key}.{name}", f"must be a finite number > 0, got {value!r}")
        if self.max_image_pixels is not None:
            _require(self.max_image_pixels >= 1, f"{key}.max_image_pixels",
                     f"must be an integer >= 1 or null, got {self.max_image_pixels!r}")
        if self.trm_base_url is not None:  # stored normalised: every user of the option sends to the same place
            object.__setattr__(self, "trm_base_url", parse_trm_base_url(self.trm_base_url, f"{key}.trm_base_url"))

    @classmethod
    def from_reward_config(cls, reward: Mapping[str, Any] | None) -> SophiaVLRewardConfig:
        """Build from verl's ``reward`` config node; unknown keys of ``reward_kwargs`` are errors."""
        return cls(**_known_options(cls, reward, "reward_kwargs", "reward.reward_kwargs"))
