"""Typed streams and RPC framing (protocol.md §3, §5, §6.1): stream types, incremental JSON, ProxyHeader.

RPC requests carry no length, no delimiter and no FIN, so ``JsonReader`` must find the end of one JSON
object however the bytes are split. The ProxyHeader is a u32 BE stream type, an i64 *little-endian* length
and JSON; ``ProxyHeaderReader`` must return the header and the client bytes that follow it. The RPC error
convention (``ERR_NGROK_`` code lines) is checked through ``split_error``/``join_error``.
"""

from __future__ import annotations

import itertools
import json
import struct
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hatchway.errors import RemoteProtocolError
from hatchway.wire import messages as m
from hatchway.wire.rpc import (
    COMMAND_TYPES,
    MAX_PROXY_HEADER,
    MAX_RPC_SIZE,
    RPC_TYPES,
    JsonReader,
    ProxyHeaderReader,
    StreamType,
    encode_proxy_header,
    parse_stream_type,
    stream_type_prefix,
)

AUTH_REQUEST = (
    b'{"Version":["3","2"],"ClientId":"","Extra":{"AuthToken":"tok {with} \\"braces\\"","OS":"linux"}}'
)
AUTH_OBJ = json.loads(AUTH_REQUEST)


# ---- stream types --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stream_type", "value"),
    [
        (StreamType.AUTH, 0),
        (StreamType.BIND, 1),
        (StreamType.UNBIND, 2),
        (StreamType.PROXY, 3),
        (StreamType.RESTART, 4),
        (StreamType.STOP, 5),
        (StreamType.UPDATE, 6),
        (StreamType.START_TUNNEL_WITH_LABEL, 7),
        (StreamType.SRV_INFO, 8),
        (StreamType.STOP_TUNNEL, 9),
        (StreamType.PATCH_TUNNEL_STATE, 10),
        (StreamType.HEARTBEAT, 0xFFFFFFFF),
    ],
)
def test_stream_type_values_and_prefix(stream_type: StreamType, value: int) -> None:
    assert stream_type == value
    prefix = stream_type_prefix(stream_type)
    assert prefix == value.to_bytes(4, "big")
    assert parse_stream_type(prefix) == value


def test_heartbeat_prefix_is_four_ff_bytes() -> None:
    assert stream_type_prefix(StreamType.HEARTBEAT) == b"\xff\xff\xff\xff"


def test_rpc_and_command_tables() -> None:
    assert RPC_TYPES[StreamType.AUTH] == (m.Auth, m.AuthResp)
    assert RPC_TYPES[StreamType.BIND] == (m.Bind, m.BindResp)
    assert RPC_TYPES[StreamType.UNBIND] == (m.Unbind, m.UnbindResp)
    assert RPC_TYPES[StreamType.START_TUNNEL_WITH_LABEL] == (
        m.StartTunnelWithLabel,
        m.StartTunnelWithLabelResp,
    )
    assert RPC_TYPES[StreamType.SRV_INFO] == (m.SrvInfo, m.SrvInfoResp)
    assert dict(COMMAND_TYPES) == {
        StreamType.RESTART: m.Restart,
        StreamType.STOP: m.Stop,
        StreamType.UPDATE: m.Update,
        StreamType.STOP_TUNNEL: m.StopTunnel,
    }
    # Agent-opened and server-opened types never overlap.
    assert not set(RPC_TYPES) & set(COMMAND_TYPES)


# ---- JsonReader --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", range(len(AUTH_REQUEST) + 1))
def test_json_reader_request_split_at_every_byte(split: int) -> None:
    reader = JsonReader()
    first = reader.feed(AUTH_REQUEST[:split])
    if split < len(AUTH_REQUEST):
        assert first is None
        assert reader.feed(AUTH_REQUEST[split:]) == AUTH_OBJ
    else:
        assert first == AUTH_OBJ


def test_json_reader_byte_by_byte() -> None:
    reader = JsonReader()
    for i in range(len(AUTH_REQUEST) - 1):
        assert reader.feed(AUTH_REQUEST[i : i + 1]) is None
    assert reader.feed(AUTH_REQUEST[-1:]) == AUTH_OBJ


def test_json_reader_go_trailing_newline() -> None:
    assert JsonReader().feed(AUTH_REQUEST + b"\n") == AUTH_OBJ
    reader = JsonReader()
    assert reader.feed(AUTH_REQUEST) == AUTH_OBJ  # complete before the newline arrives


@pytest.mark.parametrize(
    "raw",
    [
        b'  \n\t{ "Id" : "tn_1" }',
        b'{"Id":"tn_1"}\r\n',
        b'\r\n {\n  "Id": "tn_1"\n}\n\n',
    ],
)
def test_json_reader_whitespace_around_and_inside(raw: bytes) -> None:
    assert JsonReader().feed(raw) == {"Id": "tn_1"}


def test_json_reader_braces_inside_strings_do_not_end_the_object() -> None:
    reader = JsonReader()
    assert reader.feed(b'{"Metadata":"}') is None
    assert reader.feed(b'"}') == {"Metadata": "}"}


def test_json_reader_utf8_split_inside_a_character() -> None:
    raw = '{"Metadata":"héllo ✓"}'.encode()
    cut = raw.index("✓".encode()) + 1
    reader = JsonReader()
    assert reader.feed(raw[:cut]) is None
    assert reader.feed(raw[cut:]) == {"Metadata": "héllo ✓"}


def test_json_reader_too_large_raises() -> None:
    reader = JsonReader(limit=64)
    assert reader.feed(b"{" + b" " * 62) is None  # 63 bytes: still within the limit
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"  ")


def test_json_reader_default_limit() -> None:
    reader = JsonReader()
    assert reader.limit == MAX_RPC_SIZE
    with pytest.raises(RemoteProtocolError):
        reader.feed(b'{"Metadata":"' + b"x" * MAX_RPC_SIZE)


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b'{"Id":', b'{"Id":"tn_1"', b'{"Id":"tn_1",'])
def test_json_reader_eof_on_partial_input_raises(raw: bytes) -> None:
    reader = JsonReader()
    with pytest.raises(RemoteProtocolError):
        reader.feed(raw, eof=True)


def test_json_reader_eof_after_partial_feeds_raises() -> None:
    reader = JsonReader()
    assert reader.feed(b'{"Id":') is None
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"", eof=True)


def test_json_reader_eof_with_complete_object_is_fine() -> None:
    assert JsonReader().feed(b'{"Id":"x"}', eof=True) == {"Id": "x"}


@pytest.mark.parametrize(
    "raw", [b"[1, 2]", b'[{"Id": "x"}]', b'"{}"', b"42", b"null", b"true", b"1}", b'"x"}']
)
def test_json_reader_non_object_raises(raw: bytes) -> None:
    # The agent never half-closes after a request, so a value that can never become an object must be
    # refused at once rather than waited on.
    with pytest.raises(RemoteProtocolError):
        JsonReader().feed(raw)


def test_json_reader_non_object_is_refused_from_its_first_byte() -> None:
    with pytest.raises(RemoteProtocolError):
        JsonReader().feed(b" [")


@pytest.mark.parametrize("raw", [b"{bad}", b'{"Id": tn_1}', b'{"Id": "x",}', b'{"Id": "\xff"}', b'{"a" "b"}'])
def test_json_reader_invalid_object_raises_once_its_braces_close(raw: bytes) -> None:
    reader = JsonReader()
    assert reader.feed(raw[:-1]) is None
    with pytest.raises(RemoteProtocolError):
        reader.feed(raw[-1:])


def test_json_reader_deep_nesting_raises_protocol_error() -> None:
    depth = 200_000
    raw = b'{"a":' * depth + b"1" + b"}" * depth
    with pytest.raises(RemoteProtocolError):
        JsonReader(limit=len(raw)).feed(raw)


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"a":"\\"}',  # an escaped backslash right before the closing quote
        rb'{"a":"\"}"}',  # an escaped quote, then a brace inside the string
        rb'{"a":{"b":[{"c":"}{"}]},"d":"\u007d"}',  # a unicode escape
        b'{"a":"x"}  {"ignored": true}',
    ],
)
def test_json_reader_strings_and_escapes_split_at_every_byte(raw: bytes) -> None:
    end = raw.index(b"}  {") + 1 if b"}  {" in raw else len(raw)
    expected = json.loads(raw[:end])
    for split in range(len(raw) + 1):
        reader = JsonReader()
        results = [reader.feed(raw[:split]), reader.feed(raw[split:])]
        assert expected in results


def test_json_reader_trickled_request_costs_linear_time() -> None:
    # A peer that sends one '}' per DATA frame inside an open string must not make each feed re-parse
    # everything so far (that was quadratic: 64 KiB took seconds).
    reader = JsonReader()
    reader.feed(b'{"a":"')
    started = time.perf_counter()
    for _ in range(128 * 1024):
        assert reader.feed(b"}") is None
    assert time.perf_counter() - started < 3.0
    assert reader.feed(b'"}') == {"a": "}" * 128 * 1024}


@given(
    obj=st.dictionaries(
        st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=12), max_size=5
    ),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    trailing=st.sampled_from([b"", b"\n", b" \r\n"]),
)
def test_json_reader_any_object_any_split(obj: dict[str, object], cuts: list[int], trailing: bytes) -> None:
    raw = json.dumps(obj).encode() + trailing
    bounds = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    reader = JsonReader()
    results = [reader.feed(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    done = [r for r in results if r is not None]
    assert done and done[0] == obj


# ---- ProxyHeader -------------------------------------------------------------------------------------------
HEADER = m.ProxyHeader(
    id="tn_probe_a65aff68aa",
    client_addr="203.0.113.7:54321",
    proto="https",
    edge_type="3",
    passthrough_tls=False,
)
CLIENT_BYTES = b"GET /hello HTTP/1.1\r\nHost: myapp.probe.localhost\r\n\r\n"


def test_proxy_header_framing_is_byte_exact() -> None:
    raw = encode_proxy_header(HEADER)
    assert raw[:4] == b"\x00\x00\x00\x03"
    body = raw[12:]
    assert raw[4:12] == len(body).to_bytes(8, "little", signed=True)
    assert struct.unpack("<q", raw[4:12]) == (len(body),)
    obj = json.loads(body)
    assert list(obj) == ["Id", "ClientAddr", "Proto", "EdgeType", "PassthroughTLS"]
    assert obj == {
        "Id": "tn_probe_a65aff68aa",
        "ClientAddr": "203.0.113.7:54321",
        "Proto": "https",
        "EdgeType": "3",
        "PassthroughTLS": False,
    }


def test_proxy_header_length_is_little_endian_not_big_endian() -> None:
    raw = encode_proxy_header(m.ProxyHeader(id="x"))
    n = len(raw) - 12
    assert n < 256
    assert raw[4:12] == bytes([n]) + bytes(7)


STREAM = encode_proxy_header(HEADER)[4:] + CLIENT_BYTES


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_proxy_header_reader_split_at_every_byte(split: int) -> None:
    reader = ProxyHeaderReader()
    header_end = len(STREAM) - len(CLIENT_BYTES)
    first = reader.feed(STREAM[:split])
    if split < header_end:
        assert first is None
        assert reader.feed(STREAM[split:]) == (HEADER, CLIENT_BYTES)
    else:
        assert first == (HEADER, STREAM[header_end:split])


def test_proxy_header_reader_without_client_bytes() -> None:
    assert ProxyHeaderReader().feed(encode_proxy_header(HEADER)[4:]) == (HEADER, b"")


def test_proxy_header_reader_accepts_the_largest_header() -> None:
    body = b"{" + b" " * (MAX_PROXY_HEADER - 2) + b"}"
    raw = struct.pack("<q", len(body)) + body
    assert ProxyHeaderReader().feed(raw + b"x") == (m.ProxyHeader(), b"x")


@pytest.mark.parametrize("length", [-1, -(2**63), MAX_PROXY_HEADER + 1, 2**31, 2**63 - 1])
def test_proxy_header_reader_bad_length_raises(length: int) -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(RemoteProtocolError):
        reader.feed(struct.pack("<q", length))


def test_proxy_header_reader_big_endian_length_is_refused() -> None:
    # A writer that used big-endian for the length announces 2**56 * n bytes: refused, not waited for.
    body = m.encode(HEADER)
    with pytest.raises(RemoteProtocolError):
        ProxyHeaderReader().feed(struct.pack(">q", len(body)) + body)


def test_proxy_header_reader_invalid_json_raises() -> None:
    with pytest.raises(RemoteProtocolError):
        ProxyHeaderReader().feed(struct.pack("<q", 5) + b"{nope")


def test_proxy_header_reader_lower_case_keys() -> None:
    body = b'{"id":"tn_1","clientaddr":"[2001:db8::1]:443","proto":"tls","edgetype":"","passthroughtls":true}'
    header, rest = ProxyHeaderReader().feed(struct.pack("<q", len(body)) + body) or (None, b"")
    assert header == m.ProxyHeader(
        id="tn_1", client_addr="[2001:db8::1]:443", proto="tls", edge_type="", passthrough_tls=True
    )
    assert rest == b""


# ---- RPC errors ----------------------------------------------------------------------------------------
AUTH_ERROR = "The authtoken you specified is not valid (probe edge).\n\nERR_NGROK_107\n"


def test_join_error_layout() -> None:
    assert (
        m.join_error("The authtoken you specified is not valid (probe edge).", "ERR_NGROK_107") == AUTH_ERROR
    )
    assert m.join_error("plain message") == "plain message"


def test_split_error_the_auth_failure() -> None:
    assert m.split_error(AUTH_ERROR) == (
        "The authtoken you specified is not valid (probe edge).",
        "ERR_NGROK_107",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("", ("", "")),
        ("just a message", ("just a message", "")),
        ("ERR_NGROK_3200", ("", "ERR_NGROK_3200")),
        ("line one\nline two\n\nERR_NGROK_8012\n", ("line one\nline two", "ERR_NGROK_8012")),
        ("  ERR_NGROK_1  \nmessage after", ("message after", "ERR_NGROK_1")),
        ("msg\nERR_NGROK_1\nERR_NGROK_2", ("msg\nERR_NGROK_2", "ERR_NGROK_1")),
    ],
)
def test_split_error_cases(error: str, expected: tuple[str, str]) -> None:
    assert m.split_error(error) == expected


@given(
    message=st.text(
        st.characters(blacklist_categories=["Cs", "Zl", "Zp", "Cc"]) | st.just("\n"), max_size=60
    ),
    code=st.from_regex(r"ERR_NGROK_[0-9]{1,5}", fullmatch=True),
)
def test_split_join_round_trip(message: str, code: str) -> None:
    assume(message == message.strip())
    assume(not any(line.strip().startswith("ERR_NGROK_") for line in message.split("\n")))
    assume("\n".join(message.splitlines()) == message)
    assert m.split_error(m.join_error(message, code)) == (message, code)
    assert m.split_error(m.join_error(message)) == (message, "")
