"""leapcore's channel and link protocols against same-run baselines.

    .venv/bin/python benchmarks/protocol_bench.py [--quick] [--json] [--check]
    .venv/bin/python benchmarks/protocol_bench.py --profile channel_64k

The method is handshake_bench.py's (``_measure.py``): each benchmark times a leapcore operation
and its baseline in the same process, alternately, round after round, after a warm-up; the
ratio is the median over rounds of the per-round throughput ratio (leapcore/baseline, higher is
better), IQR the interquartile range of the per-round ratios. Absolute rates are the medians of
each side's samples.

============  ==============================================================  ==============
benchmark     leapcore operation / baseline                                   target
============  ==============================================================  ==============
channel_64k   ChannelEndpoint initiator send_request("bulk", 65536-byte        ratio >= 0.85
              payload) + frames_to_send() (chunk + encrypt: 2 frames) +
              responder receive_frame of each (decrypt, reassemble, decode,
              stream bookkeeping) up to the RequestReceived event /
              TransportSession encrypt + peer decrypt of the same 65536
              payload bytes as 65519 + 17
rpc_small     channel_codec.encode(Request("echo", 64-byte payload)) +         >= 150 000/s
              iter_chunks into a ChannelFrame + Reassembler.feed +             (ratio reported)
              channel_codec.decode, no encryption / struct pack + join,
              unpack_from + slices of the same fields
link_16k      link_codec.encode(ChannelData(16384-byte ciphertext)) +          reported only
              LinkDecoder receive_data + next_message / struct pack + join,
              unpack_from + slice of the same frame
============  ==============================================================  ==============

channel_64k sends 30 requests per sample through a fresh endpoint pair (made, untimed, before
each sample: nothing answers the requests, so streams would pile up). rpc_small's target is
absolute (the median leapcore rate) on the project machine; its ratio to the bare struct loop
shows how much of that is per-message Python work. link_16k has no target. Results and the
analysis of the misses: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import struct
import sys
import time
from dataclasses import asdict, dataclass

from _measure import Pair, Result, fmt_time, make_parser, measure, profile, run_info

from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.transport import TransportSession
from leapcore.proto.channel_codec import Request, decode, encode
from leapcore.proto.channel_events import RequestReceived
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.chunking import ChannelFrame, FrameFlag, Reassembled, Reassembler, iter_chunks
from leapcore.proto.limits import MAX_PLAINTEXT
from leapcore.proto.link_codec import ChannelData, LinkDecoder
from leapcore.proto.link_codec import encode as link_encode

NAMES = ["channel_64k", "rpc_small", "link_16k"]

#: channel_64k: the payload of one request (the encoded message adds 6 bytes: kind,
#: method length, "bulk"), and how many requests one sample sends.
CHANNEL_PAYLOAD = 65536
CHANNEL_METHOD = "bulk"
CHANNEL_MESSAGES = 30
#: rpc_small: payload bytes, method, frames per sample, and the absolute target.
RPC_PAYLOAD = 64
RPC_METHOD = "echo"
RPC_FRAMES = 2000
RPC_TARGET_PER_S = 150_000
#: link_16k: ciphertext bytes per data frame and frames per sample.
LINK_CIPHERTEXT = 16384
LINK_FRAMES = 500

# Baseline layouts, written out with struct (the same fields as leapcore's frames).
#: rpc_small: correlation id u64, flags u8, kind u8, method length u8 (then method, payload).
_RPC_HEADER = struct.Struct(">QBBB")
#: link_16k: length u32, kind u8, channel id u64, correlation id u64, flags u8 (then data).
_LINK_HEADER = struct.Struct(">IBQQB")


@dataclass(frozen=True)
class Spec:
    """A benchmark: the paired work, its unit of work, and what is judged."""

    pair: Pair
    units: int  # messages or frames per call
    unit: str  # what a unit is, for the report
    #: Absolute target on the median leapcore rate (units per second); None: none.
    rate_target: float | None = None


@dataclass
class Outcome:
    result: Result
    spec: Spec

    @property
    def leapcore_rate(self) -> float:
        return self.spec.units / self.result.leapcore_median_s

    @property
    def baseline_rate(self) -> float:
        return self.spec.units / self.result.baseline_median_s

    @property
    def verdict(self) -> bool | None:
        """True / False when a target is judged, None when the benchmark is reported only."""
        if self.spec.pair.target is not None:
            return self.result.passed
        if self.spec.rate_target is not None:
            return self.leapcore_rate >= self.spec.rate_target
        return None

    @property
    def target_text(self) -> str:
        if self.spec.rate_target is not None:
            return f">= {self.spec.rate_target:,.0f}/s"
        return self.result.target_text


# ---------------------------------------------------------------------------
# The work


class ChannelBench:
    """channel_64k: a 64 KiB request through two endpoints / the encryption alone."""

    def __init__(self, messages: int) -> None:
        self.payload = secrets.token_bytes(CHANNEL_PAYLOAD)
        self.rng = range(messages)
        self.fresh_endpoints()
        key_a, key_b = secrets.token_bytes(32), secrets.token_bytes(32)
        self.sender, self.receiver = TransportSession(key_a, key_b), TransportSession(key_b, key_a)
        self.pieces = (self.payload[:MAX_PLAINTEXT], self.payload[MAX_PLAINTEXT:])

    def fresh_endpoints(self) -> None:
        """A new channel (run untimed before each leapcore sample). Nothing answers the
        requests, so every sample starts with no stream open on either end, far from the
        responder's max_streams. The mode only matters for rekey: classic, no ML-KEM keys."""
        key_a, key_b = secrets.token_bytes(32), secrets.token_bytes(32)
        mode = EncryptionMode.CLASSIC
        self.initiator = ChannelEndpoint(
            TransportSession(key_a, key_b), role="initiator", mode=mode, now=0.0
        )
        self.responder = ChannelEndpoint(
            TransportSession(key_b, key_a), role="responder", mode=mode, now=0.0
        )

    def leapcore(self) -> object:
        send, drain = self.initiator.send_request, self.initiator.frames_to_send
        receive, payload = self.responder.receive_frame, self.payload
        events: list[object] = []
        for _ in self.rng:
            send(CHANNEL_METHOD, payload)
            for frame in drain():
                events = receive(frame, 0.0)
        return events

    def baseline(self) -> object:
        encrypt, decrypt = self.sender.encrypt, self.receiver.decrypt
        first, last = self.pieces
        out = b""
        for _ in self.rng:
            decrypt(encrypt(first), 0.0)
            out = decrypt(encrypt(last), 0.0)
        return out

    def check(self) -> None:
        """Both sides do the work claimed: two frames, MORE then FINAL, one RequestReceived
        with the payload; the baseline gets the same payload bytes back."""
        self.fresh_endpoints()
        cid = self.initiator.send_request(CHANNEL_METHOD, self.payload)
        frames = self.initiator.frames_to_send()
        assert [f.flags for f in frames] == [FrameFlag.MORE, FrameFlag.FINAL], frames
        assert len(frames[0].ciphertext) == MAX_PLAINTEXT + 16
        events = [e for f in frames for e in self.responder.receive_frame(f, 0.0)]
        assert events == [RequestReceived(cid, CHANNEL_METHOD, self.payload)], events
        first, last = self.pieces
        assert len(last) == CHANNEL_PAYLOAD - MAX_PLAINTEXT == 17
        out = self.receiver.decrypt(self.sender.encrypt(first), 0.0)
        out += self.receiver.decrypt(self.sender.encrypt(last), 0.0)
        assert out == self.payload
        self.fresh_endpoints()


class RpcBench:
    """rpc_small: encode + frame + reassemble + decode of small requests, no encryption."""

    def __init__(self, frames: int) -> None:
        self.payload = secrets.token_bytes(RPC_PAYLOAD)
        self.method = RPC_METHOD.encode("ascii")
        self.rng = range(frames)
        self.reassembler = Reassembler()

    def leapcore(self) -> object:
        payload, feed = self.payload, self.reassembler.feed
        message: object = None
        for _ in self.rng:
            data = encode(Request(RPC_METHOD, payload))
            for flag, piece in iter_chunks(data):
                frame = ChannelFrame(1, flag, piece)
                result = feed(frame.correlation_id, frame.flags, frame.ciphertext)
                if isinstance(result, Reassembled):
                    message = decode(result.message)
        return message

    def baseline(self) -> object:
        pack, unpack_from, size = _RPC_HEADER.pack, _RPC_HEADER.unpack_from, _RPC_HEADER.size
        payload, method = self.payload, self.method
        out: object = None
        for _ in self.rng:
            frame = b"".join((pack(1, 0, 0x01, len(method)), method, payload))
            _cid, _flags, _kind, length = unpack_from(frame)
            out = (frame[size : size + length].decode("ascii"), frame[size + length :])
        return out

    def check(self) -> None:
        assert self.leapcore() == Request(RPC_METHOD, self.payload)
        assert self.baseline() == (RPC_METHOD, self.payload)
        assert self.reassembler.incomplete == frozenset()


class LinkBench:
    """link_16k: one data frame at a time through encode and a long-lived LinkDecoder."""

    def __init__(self, frames: int) -> None:
        self.ciphertext = secrets.token_bytes(LINK_CIPHERTEXT)
        self.rng = range(frames)
        self.decoder = LinkDecoder()

    def leapcore(self) -> object:
        ciphertext, decoder = self.ciphertext, self.decoder
        receive, next_message = decoder.receive_data, decoder.next_message
        message: object = None
        for _ in self.rng:
            receive(link_encode(ChannelData(7, 1, FrameFlag.FINAL, ciphertext)))
            message = next_message()
        return message

    def baseline(self) -> object:
        pack, unpack_from, size = _LINK_HEADER.pack, _LINK_HEADER.unpack_from, _LINK_HEADER.size
        ciphertext = self.ciphertext
        length = size - 4 + len(ciphertext)
        out: object = None
        for _ in self.rng:
            frame = b"".join((pack(length, 0x02, 7, 1, 0), ciphertext))
            n, _kind, channel, cid, flags = unpack_from(frame)
            out = (channel, cid, flags, frame[size : 4 + n])
        return out

    def check(self) -> None:
        message = self.leapcore()
        assert message == ChannelData(7, 1, 0, self.ciphertext), message
        assert self.decoder.buffered == 0
        assert self.baseline() == (7, 1, 0, self.ciphertext)
        wire = link_encode(ChannelData(7, 1, 0, self.ciphertext))
        header = _LINK_HEADER.pack(_LINK_HEADER.size - 4 + LINK_CIPHERTEXT, 0x02, 7, 1, 0)
        assert wire == header + self.ciphertext, "the baseline frame is not leapcore's frame"


def build_specs(quick: bool) -> list[Spec]:
    rounds = 9 if quick else 31
    channel = ChannelBench(CHANNEL_MESSAGES)
    rpc = RpcBench(RPC_FRAMES)
    link = LinkBench(LINK_FRAMES)
    for bench in (channel, rpc, link):
        bench.check()
    return [
        Spec(
            Pair(
                "channel_64k",
                "64 KiB request through two endpoints incl. encryption / encryption alone",
                channel.leapcore,
                channel.baseline,
                "throughput",
                0.85,
                calls=1,
                rounds=rounds,
                unit_bytes=CHANNEL_PAYLOAD * CHANNEL_MESSAGES,
                leapcore_setup=channel.fresh_endpoints,
            ),
            units=CHANNEL_MESSAGES,
            unit="msg",
        ),
        Spec(
            Pair(
                "rpc_small",
                "64 B request: encode + frame + reassemble + decode / bare struct loop",
                rpc.leapcore,
                rpc.baseline,
                "throughput",
                None,
                calls=1,
                rounds=rounds,
            ),
            units=RPC_FRAMES,
            unit="frames",
            rate_target=RPC_TARGET_PER_S,
        ),
        Spec(
            Pair(
                "link_16k",
                "16 KiB link data frame: encode + LinkDecoder / bare struct + join/slice",
                link.leapcore,
                link.baseline,
                "throughput",
                None,
                calls=1,
                rounds=rounds,
                unit_bytes=LINK_CIPHERTEXT * LINK_FRAMES,
            ),
            units=LINK_FRAMES,
            unit="frames",
        ),
    ]


# ---------------------------------------------------------------------------
# Reporting


def _side(outcome: Outcome, leapcore: bool) -> str:
    r = outcome.result
    rate = outcome.leapcore_rate if leapcore else outcome.baseline_rate
    text = f"{rate:,.0f} {outcome.spec.unit}/s"
    mb_s = r.leapcore_mb_s if leapcore else r.baseline_mb_s
    if mb_s is not None:
        text = f"{mb_s:,.0f} MB/s, {text}"
    return text


def render(outcomes: list[Outcome]) -> str:
    lines = [
        f"{'benchmark':<12} {'ratio':>7} {'IQR':>13} {'target':>13} {'result':>6}   "
        f"{'leapcore (median)':>28} {'baseline (median)':>30}",
    ]
    for o in outcomes:
        r = o.result
        verdict = {True: "PASS", False: "MISS", None: "-"}[o.verdict]
        low, high = r.spread
        iqr = f"{low:.3f}-{high:.3f}"
        lines.append(
            f"{r.name:<12} {r.ratio:>7.3f} {iqr:>13} {o.target_text:>13} {verdict:>6}   "
            f"{_side(o, True):>28} {_side(o, False):>30}"
        )
    lines.append("")
    for o in outcomes:
        r = o.result
        judged = (
            "the median leapcore rate is judged"
            if o.spec.rate_target is not None
            else "the ratio is judged"
            if r.target is not None
            else "reported only"
        )
        lines.append(
            f"  {r.name}: {r.title}; ratio = median over {r.rounds} rounds of leapcore/baseline "
            f"throughput ({o.spec.units} {o.spec.unit} per sample, "
            f"{fmt_time(r.leapcore_median_s)} / {fmt_time(r.baseline_median_s)}); {judged}"
        )
    return "\n".join(lines)


def to_json(outcome: Outcome) -> dict[str, object]:
    r = outcome.result
    return {
        **asdict(r),
        "passed": outcome.verdict,  # None: reported only
        "iqr": list(r.spread),
        "target_text": outcome.target_text,
        "verdict": {True: "PASS", False: "MISS", None: None}[outcome.verdict],
        "unit": outcome.spec.unit,
        "units_per_sample": outcome.spec.units,
        "rate_target_per_s": outcome.spec.rate_target,
        "leapcore_per_s": outcome.leapcore_rate,
        "baseline_per_s": outcome.baseline_rate,
    }


def main(argv: list[str] | None = None) -> int:
    args = make_parser(__doc__ or "", NAMES).parse_args(argv)

    specs = build_specs(args.quick)
    if args.profile:
        profile([s.pair for s in specs], args.profile)
        return 0
    if args.only:
        specs = [s for s in specs if s.pair.name in args.only]
    started = time.time()
    outcomes = [Outcome(measure(spec.pair), spec) for spec in specs]
    if args.json:
        report = {**run_info(args.quick, started), "results": [to_json(o) for o in outcomes]}
        print(json.dumps(report, indent=2))
    else:
        print(
            f"leapcore channel and link protocol benchmarks (Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs{', --quick' if args.quick else ''})\n"
        )
        print(render(outcomes))
    if args.check and any(o.verdict is False for o in outcomes):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
