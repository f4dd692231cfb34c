"""Client of the thinking reward model (TRM) of SophiaVL-R1.

The TRM is a generative vision-language model served behind an OpenAI-compatible chat API (vLLM in the
reference deployment, verl's reward-model router, or ``transformers serve`` on CPU). It reads the image(s),
the question and a policy response, and answers a score in {0, 0.1, ..., 1.0} as ``<answer>x</answer>``.

What the TRM sees: the whole decoded response (``<think>...</think>`` *and* ``<answer>...</answer>``), as
the reference code sends it; the caller decides what text it passes as ``response``.

Failure semantics: an item whose request fails (after retries), whose reply is not a score in [0, 1], or
that cannot be sent scores ``NaN``, never 0, so that an outage cannot look like bad reasoning to the
algorithm. Failures are counted in :class:`TRMStats` by kind, a :class:`TRMFailure` (which declares each kind,
what it means and whether it is retried). Whatever a reply holds, the worst it does is fail its own item.

Modules, one idea each:

    _prompt.py     the Table-4 prompt, the authors' reference layout, the score parser
    _failures.py   the failure kinds (TRMFailure) and the request error
    _items.py      ThinkingRewardItem (what to score) and TRMResult (one item's score and cost)
    _images.py     images as request parts: signature sniffing, PNG encoding, downscaling, the content-keyed cache
    _replies.py    what a reply means: the failure an error reply is, the score a completion states
    _transport.py  HTTP: one connection pool per client and event loop, its lifetime, the /models probe
    _breaker.py    the circuit breaker
    _stats.py      TRMStats, the metrics under trm/, and quantile
    _client.py     ThinkingRewardClient: admission, retries, deadline, circuit breaker
"""

from sophiavl_verl.config import SophiaVLRewardConfig
from sophiavl_verl.thinking_reward._client import ThinkingRewardClient
from sophiavl_verl.thinking_reward._failures import TRMFailure, TRMRequestError
from sophiavl_verl.thinking_reward._items import ThinkingRewardItem, TRMResult
from sophiavl_verl.thinking_reward._prompt import (
    REFERENCE_TRM_INSTRUCTION,
    TRM_INSTRUCTION,
    TRM_RESPONSE_FORMAT,
    TRM_SYSTEM_PROMPT,
    build_reference_trm_prompt,
    build_trm_prompt,
    parse_score,
)
from sophiavl_verl.thinking_reward._stats import TRMStats, quantile

#: The environment variable the API key is read from by default (``trm_api_key_env``'s default).
API_KEY_ENV = SophiaVLRewardConfig.trm_api_key_env

__all__ = [
    "API_KEY_ENV",
    "REFERENCE_TRM_INSTRUCTION",
    "TRM_INSTRUCTION",
    "TRM_RESPONSE_FORMAT",
    "TRM_SYSTEM_PROMPT",
    "TRMFailure",
    "TRMRequestError",
    "TRMResult",
    "TRMStats",
    "ThinkingRewardClient",
    "ThinkingRewardItem",
    "build_reference_trm_prompt",
    "build_trm_prompt",
    "parse_score",
    "quantile",
]
