"""The server side of the SOCKS5 subset a tunnel speaks (sans-IO; RFC 1928, spec §6.2).

Bytes from the client go in (:meth:`Socks5Server.receive_data`, ``b""`` for its EOF); the
one event, :class:`ConnectRequest`, comes out of :meth:`Socks5Server.next_event`; the bytes
to send come out of :meth:`Socks5Server.data_to_send`. The caller dials the target and
answers with :meth:`Socks5Server.reply`; after a success the connection is a plain byte
pipe, starting with :attr:`Socks5Server.leftover` (anything the client sent early).

The subset:

==================  ===========================================================
version             5 only (anything else: ``bad_version``, no reply)
methods             no authentication (0x00) only; a greeting without it is
                    answered ``05 FF`` (``no_acceptable_method``)
commands            CONNECT; BIND and UDP ASSOCIATE are answered 0x07
                    (``command_not_supported``)
address types       IPv4 (0x01), domain name (0x03, passed on unresolved: the
                    worker resolves it), IPv6 (0x04); others answered 0x08
                    (``address_type_not_supported``)
success reply       ``05 00 00 01 0.0.0.0 0``
==================  ===========================================================

Every other violation — a non-zero reserved byte, an empty or non-UTF-8 domain name, an
EOF in the middle of a message (``truncated``), more than :data:`MAX_BUFFERED` bytes
before the reply — raises :class:`~leapcore.errors.Socks5Error` with its ``reason``; the
server is then closed for good, and :meth:`~Socks5Server.data_to_send` holds the reply
owed, if any (send it, then close the connection). A greeting is at most 257 bytes and a
request at most 262, so nothing here grows without bound.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import Final, NoReturn

import attrs

from ..errors import Socks5Error

__all__ = [
    "MAX_BUFFERED",
    "AddressType",
    "ConnectRequest",
    "Phase",
    "Reply",
    "Socks5Server",
    "encode_reply",
    "reply_for_dial_failure",
]

VERSION: Final = 5
METHOD_NO_AUTH: Final = 0x00
METHOD_NONE_ACCEPTABLE: Final = 0xFF
CMD_CONNECT: Final = 0x01
CMD_BIND: Final = 0x02
CMD_UDP_ASSOCIATE: Final = 0x03
#: Bytes the server holds before it has replied (a request is at most 262).
MAX_BUFFERED: Final = 64 * 1024


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928's REP codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


#: A dial failure's reason (``TunnelDialFailed.reason``) -> the reply; other reasons
#: answer HOST_UNREACHABLE, as LeapMux's dialer does.
DIAL_FAILURE_REPLIES: Final = {
    "connection_refused": Reply.CONNECTION_REFUSED,
    "network_unreachable": Reply.NETWORK_UNREACHABLE,
    "host_unreachable": Reply.HOST_UNREACHABLE,
    "timed_out": Reply.HOST_UNREACHABLE,
    "name_not_found": Reply.HOST_UNREACHABLE,
    "denied_by_policy": Reply.NOT_ALLOWED,
}


def reply_for_dial_failure(reason: str) -> Reply:
    """The reply for a failed dial whose reason code is ``reason``."""
    return DIAL_FAILURE_REPLIES.get(reason, Reply.HOST_UNREACHABLE)


class Phase(enum.Enum):
    GREETING = "greeting"
    REQUEST = "request"
    #: A CONNECT was read; the caller owes a reply.
    REPLY = "reply"
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class ConnectRequest:
    """The client asks for a connection to ``host:port`` (a domain name unresolved)."""

    host: str
    port: int
    address_type: AddressType


def encode_reply(code: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """A reply message; ``host`` an IPv4 or IPv6 literal."""
    ip = ipaddress.ip_address(host)
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes([VERSION, code, 0, atyp]) + ip.packed + struct.pack("!H", port)


class Socks5Server:
    """One SOCKS5 client connection, server side (see the module docstring)."""

    def __init__(self) -> None:
        self.phase = Phase.GREETING
        self._buffer = bytearray()
        self._eof = False
        self._out = bytearray()
        #: What the client sent after its request (valid once a request was read).
        self.leftover = b""

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the client; ``b""`` means it sent EOF."""
        if self.phase is Phase.CLOSED:
            return
        if not data:
            self._eof = True
            return
        if self.phase is Phase.OPEN:
            raise RuntimeError("the SOCKS5 exchange is over: the bytes are the tunnel's")
        self._buffer += data
        if len(self._buffer) > MAX_BUFFERED:
            self._fail("too_much_data", f"more than {MAX_BUFFERED} bytes before the reply")

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ConnectRequest | None:
        """The CONNECT request once it is complete; None while more bytes are needed (or
        the caller owes a reply); :class:`Socks5Error` for anything else."""
        if self.phase is Phase.CLOSED:
            raise Socks5Error("closed", "the SOCKS5 exchange already failed")
        if self.phase is Phase.GREETING and not self._greeting():
            self._need()
            return None
        if self.phase is Phase.REQUEST:
            request = self._request()
            if request is None:
                self._need()
            return request
        return None

    def reply(self, code: Reply, host: str = "0.0.0.0", port: int = 0) -> None:
        """Answer the CONNECT request: success opens the pipe, anything else closes."""
        if self.phase is not Phase.REPLY:
            raise RuntimeError(f"no request awaits a reply (phase {self.phase.value})")
        self._out += encode_reply(code, host, port)
        self.phase = Phase.OPEN if code is Reply.SUCCEEDED else Phase.CLOSED

    # -- parsing ---------------------------------------------------------------------------

    def _need(self) -> None:
        if self._eof:
            self._fail("truncated", f"EOF in the middle of the {self.phase.value}")

    def _fail(self, reason: str, message: str, reply: bytes = b"") -> NoReturn:
        self.phase = Phase.CLOSED
        self._buffer.clear()
        self._out += reply
        raise Socks5Error(reason, message)

    def _greeting(self) -> bool:
        buf = self._buffer
        if not buf:
            return False
        if buf[0] != VERSION:
            self._fail("bad_version", f"SOCKS version {buf[0]} (only 5 is spoken)")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return False
        count = buf[1]
        methods = bytes(buf[2 : 2 + count])
        del buf[: 2 + count]
        if METHOD_NO_AUTH not in methods:
            self._fail(
                "no_acceptable_method",
                "the client does not offer 'no authentication' (0x00)",
                bytes([VERSION, METHOD_NONE_ACCEPTABLE]),
            )
        self._out += bytes([VERSION, METHOD_NO_AUTH])
        self.phase = Phase.REQUEST
        return True

    def _request(self) -> ConnectRequest | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            self._fail("bad_version", f"SOCKS version {buf[0]} in the request")
        if len(buf) < 5:
            return None
        command, reserved, atyp = buf[1], buf[2], buf[3]
        if reserved != 0:
            self._fail("bad_request", f"reserved byte {reserved:#04x} (must be 0)")
        if command not in (CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE):
            self._fail(
                "command_not_supported",
                f"unknown command {command:#04x}",
                encode_reply(Reply.COMMAND_NOT_SUPPORTED),
            )
        if atyp == AddressType.IPV4:
            size = 4 + 4 + 2
        elif atyp == AddressType.IPV6:
            size = 4 + 16 + 2
        elif atyp == AddressType.DOMAIN:
            size = 4 + 1 + buf[4] + 2
        else:
            self._fail(
                "address_type_not_supported",
                f"address type {atyp:#04x}",
                encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        if len(buf) < size:
            return None
        if command != CMD_CONNECT:
            name = "BIND" if command == CMD_BIND else "UDP ASSOCIATE"
            self._fail(
                "command_not_supported",
                f"{name} is not supported (only CONNECT)",
                encode_reply(Reply.COMMAND_NOT_SUPPORTED),
            )
        port = int.from_bytes(buf[size - 2 : size], "big")
        if atyp == AddressType.IPV4:
            host = str(ipaddress.IPv4Address(bytes(buf[4:8])))
        elif atyp == AddressType.IPV6:
            host = str(ipaddress.IPv6Address(bytes(buf[4:20])))
        else:
            host = self._domain(bytes(buf[5 : size - 2]))
        self.leftover = bytes(buf[size:])
        buf.clear()
        self.phase = Phase.REPLY
        return ConnectRequest(host, port, AddressType(atyp))

    def _domain(self, raw: bytes) -> str:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if not name or not name.isprintable() or any(c in name for c in " /\\"):
            self._fail(
                "bad_domain",
                "an empty or malformed domain name",
                encode_reply(Reply.HOST_UNREACHABLE),
            )
        return name
