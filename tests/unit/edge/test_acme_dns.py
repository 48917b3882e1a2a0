"""DNS-01 publishers: the RFC 2136 UPDATE message (zone, TXT record, TSIG signature), the settings
parsers, and the exec hook's calling convention, failures and timeout."""

from __future__ import annotations

import base64
import sys
import textwrap
from pathlib import Path

import dns.message
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from hatchway.edge.tls.acme_dns import (
    DnsError,
    ExecDns,
    Rfc2136Dns,
    make_provider,
    parse_server,
    parse_tsig,
    update_message,
    zone_for,
)

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_parse_tsig() -> None:
    key = parse_tsig(f"acme-key:HMAC-SHA256:{SECRET}")
    assert (key.name, key.algorithm, key.secret) == ("acme-key", "hmac-sha256", SECRET)
    for bad in ("acme-key", "acme-key:hmac-sha256", f"k:hmac-sha999:{SECRET}", "k:hmac-sha256:not base64!"):
        with pytest.raises(ValueError):
            parse_tsig(bad)


def test_parse_server() -> None:
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("ns1.example.com") == ("ns1.example.com", 53)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    assert parse_server("::1") == ("::1", 53)
    for bad in (":53", "host:0", "host:99999", "host:abc"):
        with pytest.raises(ValueError):
            parse_server(bad)


def test_zone_for() -> None:
    assert zone_for("_acme-challenge.example.com.", None) == "example.com."
    assert zone_for("_acme-challenge.a.example.com", "example.com") == "example.com."


def test_update_message_adds_a_signed_txt_record() -> None:
    key = parse_tsig(f"acme-key:hmac-sha256:{SECRET}")
    msg = update_message("example.com.", "_acme-challenge.example.com.", "val-123", add=True, key=key)
    wire = msg.to_wire()
    # Parsed back with the key: the TSIG signature verifies (a wrong key would raise).
    keyring = dns.tsigkeyring.from_text({"acme-key": ("hmac-sha256", SECRET)})
    parsed = dns.message.from_wire(wire, keyring=keyring)
    assert isinstance(parsed, dns.update.UpdateMessage)
    assert parsed.opcode() == dns.opcode.UPDATE
    assert parsed.had_tsig
    assert [str(z.name) for z in parsed.zone] == ["example.com."]
    (rrset,) = parsed.update
    assert str(rrset.name) == "_acme-challenge.example.com."
    assert rrset.rdtype == dns.rdatatype.TXT and rrset.rdclass == dns.rdataclass.IN and rrset.deleting is None
    assert rrset.ttl == 60
    assert [b"".join(r.strings) for r in rrset] == [b"val-123"]
    wrong = dns.tsigkeyring.from_text({"acme-key": ("hmac-sha256", base64.b64encode(b"x" * 32).decode())})
    with pytest.raises(dns.tsig.BadSignature):
        dns.message.from_wire(wire, keyring=wrong)


def test_update_message_deletes_only_our_value() -> None:
    msg = update_message("example.com.", "_acme-challenge.example.com.", "val-123", add=False)
    parsed = dns.message.from_wire(msg.to_wire())
    assert not parsed.had_tsig
    (rrset,) = parsed.update
    # RFC 2136 §2.5.4: class NONE deletes one RR from a set, leaving other values (another order's) alone.
    assert rrset.deleting == dns.rdataclass.NONE
    assert [b"".join(r.strings) for r in rrset] == [b"val-123"]


async def test_rfc2136_reports_an_unreachable_server() -> None:
    provider = Rfc2136Dns("127.0.0.1:1")
    with pytest.raises(DnsError, match=r"DNS UPDATE to 127\.0\.0\.1:1 failed"):
        await provider.present("_acme-challenge.example.com.", "v")


def test_make_provider() -> None:
    assert make_provider("") is None
    assert isinstance(make_provider("exec", command="/bin/true"), ExecDns)
    assert isinstance(make_provider("RFC2136", server="127.0.0.1:53"), Rfc2136Dns)
    with pytest.raises(ValueError, match="--acme-dns-exec"):
        make_provider("exec")
    with pytest.raises(ValueError, match="--acme-dns-server"):
        make_provider("rfc2136")
    with pytest.raises(ValueError, match="unknown ACME DNS provider"):
        make_provider("route53")


def hook(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "hook"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


async def test_exec_hook_gets_action_fqdn_value(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    script = hook(tmp_path, f"open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    provider = ExecDns(f"{script} --flag")
    await provider.present("_acme-challenge.example.com.", "v1")
    await provider.cleanup("_acme-challenge.example.com.", "v1")
    assert out.read_text().splitlines() == [
        "--flag present _acme-challenge.example.com. v1",
        "--flag cleanup _acme-challenge.example.com. v1",
    ]


async def test_exec_hook_failure_carries_its_output(tmp_path: Path) -> None:
    script = hook(tmp_path, "print('zone is locked'); sys.exit(3)\n")
    with pytest.raises(DnsError, match="exited with 3: zone is locked"):
        await ExecDns(str(script)).present("_acme-challenge.example.com.", "v")
    with pytest.raises(DnsError, match="cannot run"):
        await ExecDns(str(tmp_path / "missing")).present("_acme-challenge.example.com.", "v")


async def test_exec_hook_timeout_kills_it(tmp_path: Path) -> None:
    script = hook(tmp_path, "time.sleep(30)\n")
    with pytest.raises(DnsError, match="took over"):
        await ExecDns(str(script), timeout=0.3).present("_acme-challenge.example.com.", "v")
