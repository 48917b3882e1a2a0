"""Benchmark: HTTP requests through Hatchway (edge + agent) against nginx as a reverse proxy and direct.

Run it as ``.venv/bin/python bench/http_proxy.py [--quick]``. It installs nothing: it needs ``wrk``,
``nginx`` and ``h2load`` on PATH and prints the ``apt-get`` line when one is missing. Everything listens on
127.0.0.1 only. It starts, each in its own process group:

* ``upstream``: nginx (one worker, keep-alive, no access log) serving a 256-byte and a 1 MiB file over
  plain HTTP, plus HTTPS on a second port as the "direct" reference for HTTPS clients;
* ``nginx``: a second nginx as a reverse proxy to it (one worker, keep-alive to the upstream), on HTTP and
  on HTTPS (HTTP/1.1 and HTTP/2) with a certificate made by ``hatchway.net.tls``;
* ``hatchway``: ``hatchway edge`` with its own data dir plus ``hatchway http UPSTREAM --scheme http,https``
  (both on uvloop), endpoint ``bench.hatchway.localhost``;
* ``hatchway-sdk``: the same edge with the official PyPI ``ngrok`` SDK as the agent (``ngrok.forward``, one
  HTTPS and one HTTP listener), endpoint ``sdk-bench.hatchway.localhost``.

wrk (``-t1 -c50 -d5s --latency``) then measures four cases (256 B and 1 MiB responses, plain HTTP and
HTTPS clients) against every target in interleaved rounds (each round visits every case and target
once, the target order rotating between rounds), and h2load (``-c 10 -m 10``) measures HTTP/2 over HTTPS.
The table shows medians over rounds, the ratio to direct and to nginx (req/s for 256 B, MB/s for 1 MiB;
MB is wrk's 2^20 bytes, headers included), errors, and the CPU each Hatchway process used during the run
(% of one core). Then the targets from the issue, each marked met or missed.

The endpoint names must resolve to 127.0.0.1 for wrk (getaddrinfo) and h2load (SNI). glibc does not
resolve ``*.localhost`` by itself, so when running as root the benchmark appends them to ``/etc/hosts``
once (marked ``# hatchway-bench``, left in place, said on stdout); otherwise wrk gets a Lua script setting
the Host header while dialing 127.0.0.1, and h2load ``--connect-to``. Every child process is stopped at
the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hatchway.net import tls

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
HATCHWAY = str(BIN / "hatchway")
TOOLS = {"wrk": "wrk", "nginx": "nginx", "h2load": "nghttp2-client"}
HATCHWAY_HOST = "bench.hatchway.localhost"
SDK_HOST = "sdk-bench.hatchway.localhost"
HOSTS_MARK = "# hatchway-bench"
FILES = {"256B": ("small.bin", 256), "1MiB": ("large.bin", 1 << 20)}
CASES = [("256B", "http"), ("256B", "https"), ("1MiB", "http"), ("1MiB", "https")]
TARGETS = ["direct", "nginx", "hatchway", "hatchway-sdk"]
START_LIMIT = 30.0
LOG_JSON = ["--log", "stdout", "--log-format", "json"]


# ---- process management ---------------------------------------------------------------------------------
class Children:
    """Every process the benchmark starts; each leads its own process group, stopped by its id at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.files: list[IO[bytes]] = []

    def start(
        self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 -- closed in stop_all
        self.files.append(out)
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _name, proc in self.procs:
            # The group may still hold a child (an nginx worker) even when its leader is gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=5)
        for f in self.files:
            f.close()
        self.procs.clear()
        self.files.clear()

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in process group ``pgid`` (an nginx master and its worker)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, within: float = START_LIMIT) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {within}s")


def wait_lines(log: Path, proc: subprocess.Popen[bytes], pattern: str, count: int) -> list[str]:
    """Lines of ``log`` matching ``pattern`` once there are ``count`` of them."""
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.findall(pattern, text)
        if len(found) >= count:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: process exited ({proc.returncode}):\n{text[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{log.name}: no {pattern!r} after {START_LIMIT}s")


# ---- the servers ----------------------------------------------------------------------------------------
NGINX_COMMON = """\
worker_processes 1;
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:{name}:1m;
    client_body_temp_path {dir}/{name}-tmp/body;
    proxy_temp_path {dir}/{name}-tmp/proxy;
    fastcgi_temp_path {dir}/{name}-tmp/fastcgi;
    uwsgi_temp_path {dir}/{name}-tmp/uwsgi;
    scgi_temp_path {dir}/{name}-tmp/scgi;
{body}
}}
"""

UPSTREAM_SERVER = """\
    server {{
        listen {host}:{port};
        listen {host}:{tls_port} ssl http2;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        root {dir}/www;
    }}
"""

PROXY_SERVER = """\
    upstream origin {{
        server {host}:{upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port};
        listen {host}:{tls_port} ssl http2;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffers 16 64k;
            proxy_buffer_size 64k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


@dataclass
class Bench:
    work: Path
    children: Children = field(default_factory=Children)
    urls: dict[tuple[str, str], str] = field(default_factory=dict)  # (target, scheme) -> base URL
    hosts_ok: bool = True
    pgids: dict[str, list[int]] = field(default_factory=dict)  # target -> process groups to watch for CPU

    def start_nginx(self, name: str, body: str) -> subprocess.Popen[bytes]:
        conf = self.work / f"{name}.conf"
        conf.write_text(NGINX_COMMON.format(dir=self.work, name=name, body=body))
        (self.work / f"{name}-tmp").mkdir(exist_ok=True)
        log = self.work / f"{name}.log"
        cmd = ["nginx", "-p", str(self.work), "-e", str(self.work / f"{name}-error.log"), "-c", str(conf)]
        return self.children.start(name, cmd, log)

    def start_all(self, with_sdk: bool) -> None:
        w = self.work
        w.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        (w / "www").mkdir()
        for fname, size in FILES.values():
            (w / "www" / fname).write_bytes(os.urandom(size))
        pair = tls.issue_cert(tls.create_ca("Hatchway Bench CA"), ["localhost", HOST])
        (w / "cert.pem").write_bytes(pair.cert_pem)
        (w / "key.pem").write_bytes(pair.key_pem)
        (w / "key.pem").chmod(0o600)
        up, up_tls, px, px_tls = free_ports(4)
        self.start_nginx("upstream", UPSTREAM_SERVER.format(host=HOST, port=up, tls_port=up_tls, dir=w))
        self.start_nginx(
            "nginx", PROXY_SERVER.format(host=HOST, port=px, tls_port=px_tls, upstream=up, dir=w)
        )
        for p in (up, up_tls, px, px_tls):
            wait_port(p)
        self.urls[("direct", "http")] = f"http://{HOST}:{up}"
        self.urls[("direct", "https")] = f"https://{HOST}:{up_tls}"
        self.urls[("nginx", "http")] = f"http://{HOST}:{px}"
        self.urls[("nginx", "https")] = f"https://{HOST}:{px_tls}"
        self.pgids["direct"] = [self.children.procs[0][1].pid]
        self.pgids["nginx"] = [self.children.procs[1][1].pid]

        data = w / "edge"
        data.mkdir()
        edge_log = w / "edge.log"
        edge = self.children.start(
            "hatchway edge",
            [HATCHWAY, "edge", "--data-dir", str(data), "--log-level", "warn"]
            + [f"--{k}-addr={HOST}:0" for k in ("http", "https", "tunnel")],
            edge_log,
        )
        deadline = time.monotonic() + START_LIMIT
        while not ((data / "edge.json").exists() and (data / "dev-token").exists()):
            if edge.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hatchway edge did not start:\n{edge_log.read_text()[-2000:]}")
            time.sleep(0.05)
        info = json.loads((data / "edge.json").read_text())
        env = {**os.environ, "HATCHWAY_DATA_DIR": str(data)}
        agent_log = w / "agent.log"
        agent = self.children.start(
            "hatchway http",
            [
                HATCHWAY,
                "http",
                f"{HOST}:{up}",
                "--domain",
                HATCHWAY_HOST,
                "--scheme",
                "http,https",
                *LOG_JSON,
            ],
            agent_log,
            env=env,
        )
        for url in wait_lines(agent_log, agent, r'"url": "([^"]+)"', 2):
            scheme = url.split("://")[0]
            self.urls[("hatchway", scheme)] = url
        self.pgids["hatchway"] = [edge.pid, agent.pid]
        if not with_sdk:
            return
        sdk_log = w / "sdk.log"
        sdk = self.children.start(
            "ngrok SDK agent",
            [sys.executable, "-c", SDK_AGENT, str(data), info["tunnel_addr"], f"{HOST}:{up}", SDK_HOST],
            sdk_log,
        )
        for url in wait_lines(sdk_log, sdk, r"(?m)^url (\S+)$", 2):
            self.urls[("hatchway-sdk", url.split("://")[0])] = url
        self.pgids["hatchway-sdk"] = [edge.pid, sdk.pid]

    def cpu(self, target: str) -> list[float]:
        return [group_cpu_seconds(p) for p in self.pgids.get(target, [])]


SDK_AGENT = textwrap.dedent(
    """\
    import asyncio, sys
    import ngrok

    async def main():
        data, server_addr, upstream, domain = sys.argv[1:5]
        token = open(data + "/dev-token").read().strip()
        ca = bytearray(open(data + "/ca.pem", "rb").read())
        common = dict(authtoken=token, server_addr=server_addr, session_ca_cert=ca, domain=domain)
        https = await ngrok.forward(upstream, **common)
        http = await ngrok.forward(upstream, schemes=["HTTP"], **common)
        for listener in (https, http):
            print("url", listener.url(), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


# ---- name resolution ------------------------------------------------------------------------------------
def resolves_to_loopback(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(info[4][0] == HOST for info in infos)


def ensure_names(names: list[str]) -> bool:
    """True when every name resolves to 127.0.0.1 (adding /etc/hosts lines as root if needed)."""
    missing = [n for n in names if not resolves_to_loopback(n)]
    if not missing:
        return True
    hosts = Path("/etc/hosts")
    if os.geteuid() == 0 and os.access(hosts, os.W_OK):
        with hosts.open("a") as fh:
            for n in missing:
                fh.write(f"{HOST} {n} {HOSTS_MARK}\n")
        print(f"added to /etc/hosts (once, marked {HOSTS_MARK!r}): {' '.join(missing)}")
        return all(resolves_to_loopback(n) for n in missing)
    print(f"cannot resolve {' '.join(missing)}: wrk sends a Host header to {HOST} (SNI will not match)")
    return False


# ---- load generators ------------------------------------------------------------------------------------
@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    mbps: float
    errors: int
    cpu: list[float]  # % of one core, per watched process group


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_BYTES = {"B": 1 / (1 << 20), "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1 << 20}


def parse_wrk(out: str) -> tuple[float, float, float, float, int]:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tput = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    errors = 0
    if sock := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in sock.groups())
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non2xx.group(1))
    if rps is None or tput is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    mbps = float(tput.group(1)) * _BYTES[tput.group(2)]
    return float(rps.group(1)), latency("50"), latency("99"), mbps, errors


def host_override_script(work: Path, url: str) -> tuple[str, list[str]]:
    """For names that do not resolve: dial 127.0.0.1 and send the endpoint's Host header (wrk Lua)."""
    scheme, rest = url.split("://")
    hostport = rest.split("/")[0]
    script = work / f"host-{hostport.replace(':', '-')}.lua"
    script.write_text(f'wrk.headers["Host"] = "{hostport}"\n')
    return f"{scheme}://{HOST}:{hostport.rsplit(':', 1)[1]}", ["-s", str(script)]


def run_wrk(
    bench: Bench, target: str, url: str, args: argparse.Namespace, duration: float, vary: str = ""
) -> Sample:
    """One wrk run; ``vary``: each request gets its own query string (``"query"``: ``?n=1``, ``?n=2``...)
    or its own path (``"path"``: ``/1``, ``/2``... appended to the URL's path), or (``"same"``) the URL's
    own, made by the same kind of Lua function, so that wrk spends the same on every request."""
    extra: list[str] = []
    if not bench.hosts_ok and target.startswith("hatchway"):
        base, extra = host_override_script(bench.work, url)
        url = base + "/" + url.split("/", 3)[3]
    if vary:
        script = Path(extra[1]).read_text() if extra else ""
        path = "/" + url.split("/", 3)[3]
        # One script per host and kind.
        lua = bench.work / (f"vary-{vary}-" + (Path(extra[1]).name if extra else "direct.lua"))
        suffix = {"query": '"?n=" .. n', "path": '"/" .. n', "same": '""'}[vary]
        counter = (
            "local n = 0\nrequest = function()\n  n = n + 1\n"
            f'  return wrk.format(nil, "{path}" .. {suffix})\nend\n'
        )
        lua.write_text(script + counter)
        extra = ["-s", str(lua)]
    cmd = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        *extra,
        url,
    ]
    before = bench.cpu(target)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    elapsed = time.monotonic() - t0
    cpu = [100 * (b - a) / elapsed for a, b in zip(before, bench.cpu(target), strict=True)]
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr}{res.stdout}")
    rps, p50, p99, mbps, errors = parse_wrk(res.stdout)
    return Sample(rps, p50, p99, mbps, errors, cpu)


def run_h2load(bench: Bench, target: str, url: str, requests: int) -> Sample:
    extra: list[str] = []
    if not bench.hosts_ok and target.startswith("hatchway"):
        extra = [f"--connect-to={HOST}:{url.split('://')[1].split('/')[0].rsplit(':', 1)[1]}"]
    cmd = ["h2load", "-n", str(requests), "-c", "10", "-m", "10", *extra, url]
    before = bench.cpu(target)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    cpu = [100 * (b - a) / elapsed for a, b in zip(before, bench.cpu(target), strict=True)]
    out = res.stdout
    fin = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", out)
    reqs = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
    )
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if fin is None or reqs is None:
        raise RuntimeError(f"unexpected h2load output ({res.returncode}):\n{out}{res.stderr}")
    if "h2" not in out.split("Application protocol:")[-1].split("\n")[0]:
        raise RuntimeError(f"h2load did not negotiate h2 with {target}:\n{out}")
    ok = int(codes.group(1)) if codes else 0
    errors = int(reqs.group(2)) + int(reqs.group(3)) + (int(reqs.group(1)) - ok)
    mbps = float(fin.group(2)) * _BYTES[fin.group(3)]
    return Sample(float(fin.group(1)), float("nan"), float("nan"), mbps, errors, cpu)


# ---- report ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    target: str
    case: str
    samples: list[Sample]

    def med(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    def cpu(self) -> list[float]:
        n = len(self.samples[0].cpu)
        return [statistics.median(s.cpu[i] for s in self.samples) for i in range(n)]

    def primary(self) -> float:
        return self.med("mbps") if self.case.startswith("1MiB") else self.med("rps")


def fmt(x: float, digits: int = 2) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}f}"


def print_table(rows: list[Row], title: str) -> None:
    by = {(r.target, r.case): r for r in rows}
    head = ["target", "case", "req/s", "p50 ms", "p99 ms", "MB/s", "x direct", "x nginx", "errors", "cpu %"]
    lines = [head]
    for r in rows:
        d, n = by.get(("direct", r.case)), by.get(("nginx", r.case))
        cpu = r.cpu()
        cpu_s = "" if not cpu else "/".join(f"{c:.0f}" for c in cpu)
        lines.append(
            [
                r.target,
                r.case,
                fmt(r.med("rps")),
                fmt(r.med("p50_ms")),
                fmt(r.med("p99_ms")),
                fmt(r.med("mbps")),
                fmt(r.primary() / d.primary()) if d else "-",
                fmt(r.primary() / n.primary()) if n else "-",
                str(sum(s.errors for s in r.samples)),
                cpu_s,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print(f"\n{title}")
    for i, line in enumerate(lines):
        print(
            "  ".join(
                c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def check_targets(rows: list[Row]) -> bool:
    by = {(r.target, r.case): r for r in rows}
    checks = [
        ("256B http", "rps", 0.55, "256 B requests, plain HTTP: req/s >= 0.55x nginx proxy"),
        ("256B https", "rps", 0.45, "HTTPS clients (256 B): req/s >= 0.45x nginx terminating HTTPS"),
        ("1MiB http", "mbps", 0.30, "1 MiB responses, plain HTTP: MB/s >= 0.3x nginx proxy"),
        ("256B http", "p99", 2.5, "p99 latency, 256 B plain HTTP: <= 2.5x nginx's"),
        ("256B https", "p99", 2.5, "p99 latency, 256 B HTTPS: <= 2.5x nginx's"),
    ]
    print(
        "\nTargets (from the issue, for Hatchway's own agent; the official SDK as the agent, 1 MiB HTTPS"
        " and p99 of 1 MiB are information)"
    )
    all_ok = True
    for target in ("hatchway", "hatchway-sdk"):
        for case, metric, bound, text in checks:
            r, n = by.get((target, case)), by.get(("nginx", case))
            if r is None or n is None:
                continue
            if metric == "p99":
                ratio = r.med("p99_ms") / n.med("p99_ms")
                ok = ratio <= bound
            else:
                ratio = r.med(metric) / n.med(metric)
                ok = ratio >= bound
            ok = ok and sum(s.errors for s in r.samples) == 0
            if target == "hatchway":
                all_ok &= ok
                mark = "met" if ok else "MISSED"
            else:
                # The official SDK's own data path is not ours to speed up: its lines are information.
                mark = "info: met" if ok else "info: below"
            print(f"  [{mark}] {target:<13} {text}: {ratio:.2f}x")
    return all_ok


# ---- main -----------------------------------------------------------------------------------------------
def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def measure(bench: Bench, args: argparse.Namespace, targets: list[str]) -> tuple[list[Row], list[Row]]:
    samples: dict[tuple[str, str], list[Sample]] = {}
    h2: dict[str, list[Sample]] = {}
    # Warm-up: every target once (connections, caches, the edge's first-request paths).
    for target in targets:
        for scheme in ("http", "https"):
            run_wrk(bench, target, bench.urls[(target, scheme)] + "/small.bin", args, 1)
    for rnd in range(args.rounds):
        for size, scheme in CASES:
            for target in rotated(targets, rnd):
                url = bench.urls[(target, scheme)] + "/" + FILES[size][0]
                s = run_wrk(bench, target, url, args, args.duration)
                samples.setdefault((target, f"{size} {scheme}"), []).append(s)
                bench.children.check_alive()
                print(
                    f"  round {rnd + 1}/{args.rounds} {size:>4} {scheme:<5} {target:<13}"
                    f" {s.rps:>10,.0f} req/s {s.mbps:>8,.0f} MB/s p99 {s.p99_ms:6.2f} ms"
                    + (f" errors {s.errors}" if s.errors else ""),
                    flush=True,
                )
        for target in rotated(targets, rnd):
            s = run_h2load(bench, target, bench.urls[(target, "https")] + "/small.bin", args.h2_requests)
            h2.setdefault(target, []).append(s)
            print(
                f"  round {rnd + 1}/{args.rounds} h2load     {target:<13} {s.rps:>10,.0f} req/s", flush=True
            )
    rows = [
        Row(t, f"{size} {scheme}", samples[(t, f"{size} {scheme}")])
        for size, scheme in CASES
        for t in targets
    ]
    h2rows = [Row(t, "256B h2", h2[t]) for t in targets]
    return rows, h2rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s runs (about 90 s in all)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default 5, --quick 2)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--h2-requests", type=int, help="h2load -n (default 15000, --quick 5000)")
    ap.add_argument("--no-sdk", action="store_true", help="skip the ngrok SDK agent")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs and logs)")
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.h2_requests = args.h2_requests or (5000 if args.quick else 15000)
    args.duration = int(args.duration) if float(args.duration).is_integer() else args.duration

    if missing := missing_tools():
        print(f"missing: {', '.join(missing)}; install them with:")
        print(f"  apt-get update && apt-get install -y {' '.join(sorted({TOOLS[t] for t in missing}))}")
        return 2
    with_sdk = not args.no_sdk
    if with_sdk:
        try:
            import ngrok  # noqa: F401
        except ImportError:
            print("the ngrok package is not installed: skipping the SDK agent (.venv/bin/pip install ngrok)")
            with_sdk = False
    targets = [t for t in TARGETS if with_sdk or t != "hatchway-sdk"]

    work = Path(tempfile.mkdtemp(prefix="hatchway-bench-"))
    bench = Bench(work)
    bench.hosts_ok = ensure_names([HATCHWAY_HOST] + ([SDK_HOST] if with_sdk else []))
    # SIGTERM ends the run like Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    t0 = time.monotonic()
    try:
        bench.start_all(with_sdk)
        print(f"work dir {work}; targets:")
        for (target, scheme), url in sorted(bench.urls.items()):
            print(f"  {target:<13} {scheme:<5} {url}")
        print(
            f"wrk -t1 -c{args.connections} -d{args.duration}s --latency, {args.rounds} interleaved rounds;"
            f" h2load -n {args.h2_requests} -c 10 -m 10; {os.cpu_count()} cores"
        )
        rows, h2rows = measure(bench, args, targets)
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        bench.children.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(
        rows,
        "HTTP/1.1 (wrk), medians over rounds; x direct / x nginx: req/s for 256 B, MB/s for 1 MiB;"
        " cpu %: % of one core used by the target's processes (hatchway: edge/agent)",
    )
    print_table(h2rows, "HTTP/2 over HTTPS (h2load -c 10 -m 10, 256 B), medians over rounds")
    ok = check_targets(rows)
    h2 = {r.target: r for r in h2rows}
    for target in ("hatchway", "hatchway-sdk"):
        if target in h2:
            ratio = h2[target].med("rps") / h2["nginx"].med("rps")
            print(f"  [info] {target:<13} HTTP/2 req/s vs nginx: {ratio:.2f}x")
    print(f"\ntook {time.monotonic() - t0:.0f} s; all targets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
