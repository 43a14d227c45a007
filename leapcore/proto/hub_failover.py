"""A worker's list of hub URLs: how it is written, and which hub to dial next (sans-IO).

A worker may be given several URLs of the hubs of one deployment (several hubs on one
database: they share its ``hub_id`` and accept the same tokens). :func:`split_hub_urls`
reads them -- ``--hub`` repeated, or several URLs separated by commas in one value -- and
:func:`check_hub_urls` bounds them: at least one, at most
:data:`~leapcore.proto.limits.MAX_HUB_URLS`, no empty element, no URL twice (refused, not
collapsed: a list with a repeat is a mistake worth hearing about).

:class:`HubFailover` wraps :class:`~leapcore.proto.backoff.ReconnectPolicy` and applies the
backoff of ``spec/behavior.md`` §1 to a list, by **passes**:

* A pass tries each usable URL once, in the list's order (cyclically), starting at the
  *preferred* URL: the last one a hub greeted the worker on (at start, the one ``hub.json``
  names when it is in the list, else the first).
* A failed attempt (a dial that fails, a link that drops, a ``go_away``) moves to the next
  URL of the pass **at once**; only when every URL of the pass has failed does the worker
  wait -- the backoff delay, or the hub's go-away delay -- and start a new pass at the
  preferred URL.
* An attempt that lasted :attr:`~leapcore.proto.backoff.ReconnectPolicy.RESET_AFTER` (30 s,
  timed from the dial) resets the backoff, as for one URL, and starts a new pass of which it
  is the first failed member; so does a link that ended with a ``go_away`` (the hub asked
  its workers to go elsewhere). The pass then goes on to the next URL without waiting.
* A go-away's delay (``reconnect_delay`` > 0) is the leaving hub's request not to be dialled
  again before then: it is not waited while other URLs remain in the pass, and is waited
  (exactly, no jitter, then the backoff is reset) if the pass fails. A delay of 0 is no
  request: a failed pass waits the backoff.
* A hub whose refusal means "not the deployment this worker belongs to"
  (:attr:`~leapcore.proto.backoff.Outcome.HUB_MISMATCH`) is dropped from the list for the
  life of the process while another URL is usable; the last usable one's refusal is the
  worker's :attr:`~leapcore.proto.backoff.ReconnectAction.HUB_MISMATCH`, as for one URL.

With one URL a pass is one attempt, and the decisions are exactly
:class:`~leapcore.proto.backoff.ReconnectPolicy`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .backoff import (
    PERMANENT,
    Outcome,
    ReconnectAction,
    ReconnectDecision,
    ReconnectPolicy,
)
from .limits import MAX_HUB_URLS

__all__ = ["HubFailover", "check_hub_urls", "hub_urls_problem", "split_hub_urls"]


def split_hub_urls(value: str | Sequence[str], *, where: str = "hub") -> list[str]:
    """The URLs in ``value``: one text, or several (``--hub`` repeated), each holding one URL
    or several separated by commas; white space around each is dropped. An empty element
    (``a,,b``, a trailing comma, a blank item of a list) is a :class:`ConfigError` naming
    ``where``; one blank text names no URL (an unset setting).
    """
    if isinstance(value, str) and not value.strip():
        return []
    texts = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for text in texts:
        for item in text.split(","):
            url = item.strip()
            if not url:
                raise ConfigError(
                    f"{where}: {text!r} has an empty hub URL (separate several with commas, "
                    "none empty)"
                )
            urls.append(url)
    return urls


def hub_urls_problem(urls: Sequence[str]) -> str | None:
    """What is wrong with a list of hub URLs (None: nothing). An empty list is acceptable
    here (a registered worker then dials ``hub.json``'s URL)."""
    if len(urls) > MAX_HUB_URLS:
        return f"names {len(urls)} hub URLs; at most {MAX_HUB_URLS} are allowed"
    seen: set[str] = set()
    for url in urls:
        if not url.strip():
            return "has an empty hub URL"
        if url in seen:
            return f"names hub URL {url!r} twice"
        seen.add(url)
    return None


def check_hub_urls(urls: Sequence[str], *, where: str = "hub") -> tuple[str, ...]:
    """``urls`` stripped, checked by :func:`hub_urls_problem` (:class:`ConfigError`)."""
    stripped = tuple(url.strip() for url in urls)
    problem = hub_urls_problem(stripped)
    if problem is not None:
        raise ConfigError(f"{where} {problem}")
    return stripped


class HubFailover:
    """Which hub URL to dial, and when (see the module docstring)."""

    def __init__(
        self, urls: Sequence[str], policy: ReconnectPolicy | None = None, *, preferred: str = ""
    ) -> None:
        self.urls = check_hub_urls(urls)
        if not self.urls:
            raise ConfigError("hub: no hub URL")
        self.policy = policy if policy is not None else ReconnectPolicy()
        #: URLs dropped for this process (a hub of another deployment), in the order dropped.
        self.refused: list[str] = []
        self._preferred = self.urls.index(preferred) if preferred in self.urls else 0
        self._index = self._preferred
        #: Failed attempts in the current pass.
        self._tried = 0

    @property
    def current(self) -> str:
        """The URL to dial now."""
        return self.urls[self._index]

    @property
    def usable(self) -> list[str]:
        """The URLs not refused, in the list's order."""
        return [url for url in self.urls if url not in self.refused]

    def order(self) -> list[str]:
        """The usable URLs in the order of a pass that starts now (at :attr:`current`)."""
        n = len(self.urls)
        turn = [self.urls[(self._index + i) % n] for i in range(n)]
        return [url for url in turn if url not in self.refused]

    def use(self, url: str) -> None:
        """Make ``url`` (one of :attr:`urls`) the current and preferred URL: a hub there
        answered (it registered or greeted the worker)."""
        self._index = self._preferred = self.urls.index(url)

    def greeted(self) -> None:
        """A hub greeted the worker on :attr:`current`: passes start there from now on."""
        self._preferred = self._index

    def _advance(self) -> None:
        n = len(self.urls)
        for step in range(1, n + 1):
            index = (self._index + step) % n
            if self.urls[index] not in self.refused:
                self._index = index
                return

    def _restart(self) -> None:
        """The pass is over: the next starts at the preferred URL (or the next usable)."""
        self._tried = 0
        if self.urls[self._preferred] in self.refused:
            self._index = self._preferred
            self._advance()
            self._preferred = self._index
        else:
            self._index = self._preferred

    def after_attempt(
        self, started_at: float, now: float, outcome: Outcome, *, went_away: bool = False
    ) -> ReconnectDecision:
        """Decide after an attempt on :attr:`current` that started (before dialling) at
        ``started_at``; ``went_away`` when the hub sent ``go_away`` on it. A retry with
        delay 0 moves to the next URL now; :attr:`current` is the URL to dial next."""
        if outcome is Outcome.HUB_MISMATCH and len(self.usable) > 1:
            self.refused.append(self.current)
            if self._tried < len(self.usable):
                self._advance()
                return ReconnectDecision(ReconnectAction.RETRY, 0.0)
            self._restart()
            return self.policy.after_attempt(started_at, now, Outcome.TRANSIENT)
        if outcome in PERMANENT:
            return self.policy.after_attempt(started_at, now, outcome)
        lasted = now - started_at >= self.policy.RESET_AFTER
        if went_away or lasted:
            self._tried = 1
            if lasted:
                self.policy.backoff.reset()
            if not went_away:
                self.policy.hub_requested_delay(0)  # an older go-away's request is spent
        else:
            self._tried += 1
        if self._tried < len(self.usable):
            self._advance()
            return ReconnectDecision(ReconnectAction.RETRY, 0.0)
        self._restart()
        return self.policy.after_attempt(started_at, now, outcome)
