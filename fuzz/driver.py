"""The bounded, deterministic mutation driver (no dependencies beyond leapcore).

``run_campaign(name, seed=..., count=...)`` feeds harness ``name`` its edge cases, its valid
seeds and ``count`` structured mutations drawn from ``random.Random(f"{name}:{seed}")``; the
same name, seed and count always produce the same inputs. A harness failure propagates with a
note saying how to reproduce it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from . import harnesses
from .mutate import Region, campaign, mutate

__all__ = [
    "PLANS",
    "Plan",
    "Stats",
    "campaign_inputs",
    "run_campaign",
    "run_inputs",
    "run_signature_campaign",
    "signature_inputs",
]


@dataclass(frozen=True)
class Plan:
    #: In-place mutations only touch this byte range (length-changing ones still happen).
    region: Region = None
    #: Half of the mutations are JSON-aware edits of the key fields.
    json_fields: bool = False


PLANS: dict[str, Plan] = {
    "message1_classic": Plan(),
    "message1_pq": Plan(),
    "message2_classic": Plan(),
    # A message 2 that passes tag2 costs an SLH-DSA verify (~3.4 ms): keep the bulk of the
    # in-place mutations on E || tag2; signature_inputs() covers the signature separately.
    "message2_pq": Plan(region=(0, harnesses.PREFIX)),
    "transport_decrypt": Plan(),
    "key_json": Plan(json_fields=True),
    "keyfile": Plan(json_fields=True),
    "link_stream": Plan(),
    "link_hub": Plan(),
    "relay": Plan(),
    "pin_file": Plan(),
    "channel_message": Plan(),
    "reassembly": Plan(),
    "channel_endpoint": Plan(),
    "h2_server": Plan(),
    "ws_server": Plan(),
    "socks5": Plan(),
    "worker_policy": Plan(),
}


@dataclass
class Stats:
    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.inputs} inputs, {self.accepted} accepted, "
            f"{self.rejected} rejected, {self.seconds:.2f} s"
        )


def campaign_inputs(name: str, *, seed: int = 0, count: int = 1000) -> Iterator[bytes]:
    plan = PLANS[name]
    rng = random.Random(f"{name}:{seed}")
    return campaign(
        harnesses.seeds(name), rng, count, region=plan.region, json_fields=plan.json_fields
    )


def signature_inputs(*, seed: int = 0, count: int = 6) -> Iterator[bytes]:
    """Valid post-quantum message 2 with only its signature (bytes 48..) mutated."""
    rng = random.Random(f"message2_pq-signature:{seed}")
    (message2,) = harnesses.seeds("message2_pq")
    region = (harnesses.PREFIX, len(message2))
    for _ in range(count):
        out = mutate(message2, rng, region=region, keep_length=True)
        yield out if out != message2 else out[:-1] + bytes([out[-1] ^ 1])


def run_inputs(name: str, inputs: Iterable[bytes], *, label: str) -> Stats:
    """Feed ``inputs`` to harness ``name``; count outcomes; raise the first HarnessFailure."""
    stats = Stats(name)
    start = time.perf_counter()
    for index, data in enumerate(inputs):
        try:
            accepted = harnesses.accepts(name, data)
        except harnesses.HarnessFailure as exc:
            exc.add_note(f"reproduce: {label}, input #{index}")
            raise
        stats.inputs += 1
        if accepted:
            stats.accepted += 1
        else:
            stats.rejected += 1
    stats.seconds = time.perf_counter() - start
    return stats


def run_campaign(name: str, *, seed: int = 0, count: int = 1000) -> Stats:
    """Run one harness over its campaign; raise the first HarnessFailure."""
    label = f"run_campaign({name!r}, seed={seed}, count={count})"
    return run_inputs(name, campaign_inputs(name, seed=seed, count=count), label=label)


def run_signature_campaign(*, seed: int = 0, count: int = 6) -> Stats:
    """message2_pq on signature-only mutations: every one reaches the SLH-DSA verify."""
    label = f"run_signature_campaign(seed={seed}, count={count})"
    return run_inputs("message2_pq", signature_inputs(seed=seed, count=count), label=label)
