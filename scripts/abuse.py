#!/usr/bin/env python3
"""Murmur's attack suite: hostile tenants against the real binary.

Each check starts `murmur serve` (the binary in $MURMUR_BIN, default
target/debug/murmur) on 127.0.0.1 with a fresh temporary data dir and a small
tier table, signs up the tenants it needs, runs one attack as a free tenant
would, and compares what the server did with what a shared server must do:
refuse in time, stay responsive for the other tenants, keep its memory,
meter honestly, forget revoked credentials, and never show one tenant's data
to another. The expectations are the hardened behaviour; a check that fails
says what the server did instead.

Limits, on purpose:
- Python 3 standard library only (no pip), raw sockets for HTTP/1.1 and a
  minimal RFC 6455 client, so the requests are exactly the hostile ones.
- Every request goes to 127.0.0.1, every loop is bounded in count and time,
  and every server is killed at the end of its check.
- It builds nothing. Audio is generated here (a FLAC writer with CONSTANT
  subframes, so hours of silence are a few hundred KB); no ffmpeg needed.
- Memory is the server's VmRSS/VmHWM from /proc; the peak is reset through
  /proc/PID/clear_refs before an attack so VmHWM is that attack's peak.
- The hostile biscuit block needs a signing step, done by the Rust example
  `hostile_token` ($MURMUR_HOSTILE_TOKEN_BIN, default
  <binary dir>/examples/hostile_token); without it that check is SKIP.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime as dt
import hashlib
import json
import math
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

PASSWORD = "correct horse battery staple"
MB = 1024 * 1024

# Like tests/common/mod.rs TEST_TIERS, plus the audio-length limit the
# hardening adds. `{audio_basic}` etc. are filled in (or the lines dropped
# for a binary that does not know the field yet).
TIERS = """
default_tier = "basic"
[tiers.basic]
rank = 0
max_file_bytes = 400000
concurrent_jobs = 2
models = ["tiny", "base"]
diarization = false
bgm_separation = false
translation = "limited"
translation_max_file_seconds = 600
translation_jobs_per_month = 20
storage_bytes = 1000000
max_workflows = 2
{audio_basic}
[tiers.premium]
rank = 1
max_file_bytes = 2000000
concurrent_jobs = 5
models = ["tiny", "base", "small", "medium"]
diarization = true
bgm_separation = true
translation = "full"
storage_bytes = 20000000
max_workflows = 20
{audio_premium}
[tiers.enterprise]
rank = 2
max_file_bytes = 4000000
concurrent_jobs = 10
models = ["*"]
diarization = true
bgm_separation = true
translation = "full"
storage_bytes = 100000000
{audio_enterprise}
[entitlements]
premium = "premium"
enterprise = "enterprise"
"""
AUDIO_LIMITS = {"basic": 60, "premium": 3600, "enterprise": 14400}


class HarnessError(Exception):
    """The suite itself could not do what a check needs (not a verdict)."""


# ---------------------------------------------------------------- HTTP/1.1


class Resp:
    """One answer: status (0 when none came), headers, body, time taken."""

    def __init__(self, status=0, headers=None, body=b"", elapsed=0.0, error=None):
        self.status = status
        self.headers = headers or []
        self.body = body
        self.elapsed = elapsed
        self.error = error

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def code(self):
        j = self.json()
        return j.get("code") if isinstance(j, dict) else None

    def is_problem(self):
        ct = self.header("content-type") or ""
        j = self.json()
        return (
            ct.startswith("application/problem+json")
            and isinstance(j, dict)
            and j.get("status") == self.status
            and isinstance(j.get("code"), str)
        )

    def brief(self):
        if not self.status:
            return f"no answer ({self.error})"
        code = self.code
        return f"{self.status} {code}" if code else str(self.status)


def _recv(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)
    return sock.recv(65536)


def _read_response(sock, deadline):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = _recv(sock, deadline)
            if not chunk:
                raise ConnectionError("closed before an answer" if not buf else "closed mid-header")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        if 100 <= status < 200 and status != 101:
            buf = rest
            continue
        break
    hmap = dict(headers)
    if status == 101:
        return status, headers, rest
    if "chunked" in hmap.get("transfer-encoding", "").lower():
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = _recv(sock, deadline)
            if not chunk:
                break
            rest += chunk
        body, pos = b"", 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(rest[pos:eol].split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body += rest[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
        return status, headers, body
    if "content-length" in hmap:
        n = int(hmap["content-length"])
        while len(rest) < n:
            chunk = _recv(sock, deadline)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:n]
    while True:
        try:
            chunk = _recv(sock, deadline)
        except (ConnectionError, TimeoutError):
            break
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def _chunked(pieces):
    for p in pieces:
        if p:
            yield b"%x\r\n" % len(p) + p + b"\r\n"
    yield b"0\r\n\r\n"


def http(addr, method, path, headers=None, body=None, chunked=False, timeout=30.0):
    """Sends one request on a new connection and reads the answer.

    `body` is bytes or an iterable of bytes (sent as it is produced, from a
    second thread, so a server that answers early is still heard).
    Never raises for network trouble: the answer has status 0 and `error`.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    hdrs = {"Host": f"{addr[0]}:{addr[1]}", "Connection": "close"}
    hdrs.update(headers or {})
    if body is None:
        pieces = []
    elif isinstance(body, (bytes, bytearray)):
        pieces = [bytes(body)]
        if not chunked:
            hdrs.setdefault("Content-Length", str(len(body)))
    else:
        pieces = body
    if chunked:
        hdrs["Transfer-Encoding"] = "chunked"
        pieces = _chunked(pieces)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    try:
        sock = socket.create_connection(addr, timeout=timeout)
    except OSError as e:
        return Resp(elapsed=time.monotonic() - t0, error=f"connect: {e}")
    send_error = []

    def send():
        try:
            sock.sendall(head.encode("latin-1"))
            for p in pieces:
                if time.monotonic() > deadline:
                    raise TimeoutError("sending took too long")
                sock.sendall(p)
        except (OSError, TimeoutError) as e:
            send_error.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        status, headers, rbody = _read_response(sock, deadline)
        return Resp(status, headers, rbody, time.monotonic() - t0)
    except (OSError, TimeoutError, ValueError, IndexError) as e:
        extra = f"; while sending: {send_error[0]}" if send_error else ""
        return Resp(elapsed=time.monotonic() - t0, error=f"{type(e).__name__}: {e}{extra}")
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        sender.join(timeout=5)


def multipart(parts, boundary="abuseboundary7d93b1"):
    """Yields a multipart/form-data body. A part is (name, filename or None,
    content type or None, bytes or an iterable of bytes)."""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        yield (head + "\r\n").encode("utf-8")
        if isinstance(data, (bytes, bytearray)):
            yield bytes(data)
        else:
            yield from data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


MULTIPART_TYPE = "multipart/form-data; boundary=abuseboundary7d93b1"


# ---------------------------------------------------------------- WebSocket


class WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), frames in."""

    def __init__(self, addr, path, token, timeout=10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        status, headers, rest = _read_response(self.sock, time.monotonic() + timeout)
        if status != 101:
            raise HarnessError(f"WebSocket upgrade answered {status}")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        if dict(headers).get("sec-websocket-accept") != accept:
            raise HarnessError("WebSocket upgrade with a wrong Sec-WebSocket-Accept")
        self.buf = rest
        self.closed = None  # why the server ended the connection

    def send_text(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        else:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            self.sock.sendall(head + mask + masked)
        except OSError as e:
            self.closed = self.closed or f"send failed: {e}"

    def _need(self, n, deadline):
        while len(self.buf) < n:
            chunk = _recv(self.sock, deadline)
            if not chunk:
                raise ConnectionError("EOF")
            self.buf += chunk

    def recv(self, timeout):
        """The next text message, or None on timeout or when closed (then
        `self.closed` says how)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._need(2, deadline)
                b0, b1 = self.buf[0], self.buf[1]
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    self._need(4, deadline)
                    n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127:
                    self._need(10, deadline)
                    n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
                self._need(pos + n, deadline)
                payload, self.buf = self.buf[pos : pos + n], self.buf[pos + n :]
                opcode = b0 & 0x0F
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    self.closed = f"close frame {code} {payload[2:].decode(errors='replace')}".strip()
                    return None
                if opcode == 0x9:
                    self._pong(payload)
                    continue
                if opcode == 0x1:
                    return payload.decode(errors="replace")
        except TimeoutError:
            return None
        except (ConnectionError, OSError) as e:
            self.closed = f"connection ended ({type(e).__name__})"
            return None

    def _pong(self, payload):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask + masked)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- audio


def tone_wav(seconds, rate=16000):
    """A 16-bit mono WAV of a 440 Hz tone (as tests/common tone_wav)."""
    n = int(seconds * rate)
    samples = bytearray(2 * n)
    for i in range(n):
        s = int(math.sin(i / rate * 440.0 * math.tau) * 0.3 * 32767)
        struct.pack_into("<h", samples, 2 * i, s)
    head = b"RIFF" + struct.pack("<I", 36 + 2 * n) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16
    ) + b"data" + struct.pack("<I", 2 * n)
    return head + bytes(samples)


def _crc8(data):
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(n):
    if n < 0x80:
        return bytes([n])
    for count, limit in ((2, 1 << 11), (3, 1 << 16), (4, 1 << 21), (5, 1 << 26), (6, 1 << 31), (7, 1 << 36)):
        if n < limit:
            break
    tail = []
    for _ in range(count - 1):
        tail.insert(0, 0x80 | (n & 0x3F))
        n >>= 6
    return bytes([((0xFF << (8 - count)) & 0xFF) | n] + tail)


FLAC_BLOCK = 16384


def silent_flac(seconds, rate=16000):
    """A valid mono 16-bit FLAC of `seconds` of silence at 16 kHz: every
    frame is one CONSTANT subframe, so hours take ~13 bytes per 16384
    samples. STREAMINFO tells the true total."""
    assert rate == 16000, "the frame header codes 16 kHz only"
    total = int(seconds * rate)
    info = (
        (FLAC_BLOCK << 128) | (FLAC_BLOCK << 112) | (0 << 88) | (0 << 64)
        | (rate << 44) | (0 << 41) | (15 << 36) | total
    ).to_bytes(18, "big") + bytes(16)
    out = [b"fLaC", bytes([0x80, 0, 0, 34]), info]
    frame_no, left = 0, total
    while left > 0:
        block = min(FLAC_BLOCK, left)
        if block == FLAC_BLOCK:
            code, extra = 14, b""
        else:
            code, extra = 0b0111, (block - 1).to_bytes(2, "big")
        head = bytes([0xFF, 0xF8, (code << 4) | 0b0101, 0b0000_100_0]) + _utf8_number(frame_no) + extra
        frame = head + bytes([_crc8(head)]) + b"\x00\x00\x00"  # CONSTANT subframe, value 0
        out.append(frame + _crc16(frame).to_bytes(2, "big"))
        frame_no += 1
        left -= block
    return b"".join(out)


def flac_claim_samples(data, samples):
    """Rewrites STREAMINFO's 36-bit total-samples field (the first metadata
    block after "fLaC"; bytes 13..18 of its body) to claim `samples`."""
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise HarnessError("not a FLAC starting with STREAMINFO")
    body = bytearray(data[8:42])
    body[13] = (body[13] & 0xF0) | ((samples >> 32) & 0x0F)
    body[14:18] = (samples & 0xFFFFFFFF).to_bytes(4, "big")
    return data[:8] + bytes(body) + data[42:]


def flac_total_samples(data):
    body = data[8:42]
    return ((body[13] & 0x0F) << 32) | int.from_bytes(body[14:18], "big")


# ---------------------------------------------------------------- the server


_LIVE = []


def _kill_all():
    for srv in list(_LIVE):
        srv.stop()


atexit.register(_kill_all)


def cache_dir():
    d = os.environ.get("MURMUR_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "murmur"


class Tenant:
    def __init__(self, name, id, user_id, email, token):
        self.name, self.id, self.user_id, self.email, self.token = name, id, user_id, email, token


class Server:
    """`murmur serve` on 127.0.0.1:<free port> with a temporary data dir."""

    def __init__(self, binary, workdir, audio_limits=True):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="murmur-abuse-", dir=workdir))
        self.proc = None
        self.addr = None
        self.note = ""
        self.audio_limits = audio_limits

    def _write_config(self, audio_limits):
        tiers = TIERS.format(
            **{
                f"audio_{t}": (f"max_audio_seconds = {s}" if audio_limits else "")
                for t, s in AUDIO_LIMITS.items()
            }
        )
        (self.dir / "tiers.toml").write_text(tiers)
        cfg = f"""
[server]
listen = "127.0.0.1:0"
[store]
data_dir = {json.dumps(str(self.dir / "data"))}
[models]
dir = {json.dumps(str(cache_dir() / "models"))}
fetch_missing = false
default_model = "tiny"
[jobs]
backoff_base = 200
[billing]
tiers_file = {json.dumps(str(self.dir / "tiers.toml"))}
"""
        (self.dir / "murmur.toml").write_text(cfg)

    def start(self):
        try:
            self._spawn(self.audio_limits)
        except HarnessError as e:
            if self.audio_limits and "max_audio_seconds" in str(e):
                self.note = "this binary has no tier field max_audio_seconds"
                self._spawn(False)
            else:
                raise
        _LIVE.append(self)
        return self

    def _spawn(self, audio_limits):
        self._write_config(audio_limits)
        err = open(self.dir / "stderr.log", "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        # Production password cost (the config default): the login flood
        # must cost what it costs in production.
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.dir / "murmur.toml"), "serve"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=self.dir,
        )
        lines = queue.Queue()

        def pump():
            for raw in self.proc.stdout:
                lines.put(raw.decode(errors="replace"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            m = re.match(r"murmur listening on http://([\d.]+):(\d+)", line)
            if m:
                self.addr = (m.group(1), int(m.group(2)))
                return
        self.proc.kill()
        self.proc.wait()
        tail = (self.dir / "stderr.log").read_text(errors="replace")[-2000:]
        raise HarnessError(f"murmur did not start: {tail.strip()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in _LIVE:
            _LIVE.remove(self)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- memory

    def memory(self):
        """(VmRSS, VmHWM) in bytes."""
        vals = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        k, v = line.split(":")
                        vals[k] = int(v.split()[0]) * 1024
        except OSError:
            return (0, 0)
        return vals.get("VmRSS", 0), vals.get("VmHWM", 0)

    def reset_peak(self):
        """Makes VmHWM the current RSS, so a later VmHWM is this phase's peak."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    # ---- requests

    def req(self, method, path, token=None, json_body=None, headers=None, body=None, **kw):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        return http(self.addr, method, path, h, body, **kw)

    def get(self, path, token=None, **kw):
        return self.req("GET", path, token, **kw)

    def post(self, path, obj, token=None, **kw):
        return self.req("POST", path, token, json_body=obj, **kw)

    def delete(self, path, token=None, **kw):
        return self.req("DELETE", path, token, **kw)

    def upload(self, token, parts, path="/v1/files", chunked=False, timeout=60.0):
        body = multipart(parts)
        if not chunked:
            body = b"".join(body)
        return self.req(
            "POST", path, token, headers={"Content-Type": MULTIPART_TYPE}, body=body,
            chunked=chunked, timeout=timeout,
        )

    def upload_file(self, token, name, data, ctype="audio/wav"):
        return self.upload(token, [("file", name, ctype, data)])

    # ---- tenants

    def login(self, email, password=PASSWORD):
        return self.post("/v1/auth/login", {"email": email, "password": password})

    def signup(self, name):
        email = f"{name.lower()}-{uuid.uuid4().hex[:12]}@abuse.example"
        r = self.post("/v1/auth/signup", {"tenant": name, "email": email, "password": PASSWORD})
        if r.status not in (200, 201, 202):
            raise HarnessError(f"signup of {name} answered {r.brief()}")
        body = r.json() or {}
        token = body.get("token")
        if not token:  # a signup that answers the same for every email
            lr = self.login(email)
            token = (lr.json() or {}).get("token")
            if not token:
                raise HarnessError(f"login after signup of {name} answered {lr.brief()}")
        me = self.get("/v1/me", token).json() or {}
        try:
            return Tenant(name, me["tenant"]["id"], me["user"]["id"], email, token)
        except (KeyError, TypeError):
            raise HarnessError(f"/v1/me of {name} answered {me}")

    def set_tier(self, tenant_id, tier):
        op = json.loads((self.dir / "data" / "operator.json").read_text())
        r = self.post("/v1/admin/set-tier", {"tenant": tenant_id, "tier": tier, "operator": "abuse"}, op["token"])
        if r.status != 200:
            raise HarnessError(f"set-tier answered {r.brief()}")

    def model_installed(self, token, name="tiny"):
        items = (self.get("/v1/models", token).json() or {}).get("items", [])
        return any(m.get("id") == name and m.get("installed") for m in items)


class Probe(threading.Thread):
    """Another tenant's traffic during an attack: GET /healthz and
    GET /v1/jobs every `period` seconds (bounded count), with latencies."""

    def __init__(self, srv, token, period=0.1, max_rounds=600):
        super().__init__(daemon=True)
        self.srv, self.token, self.period, self.max_rounds = srv, token, period, max_rounds
        self.samples = []  # (path, seconds, status)
        self.halt = threading.Event()

    def run(self):
        for _ in range(self.max_rounds):
            if self.halt.is_set():
                return
            for path, tok in (("/healthz", None), ("/v1/jobs", self.token)):
                r = self.srv.get(path, tok, timeout=10)
                self.samples.append((path, r.elapsed, r.status))
            self.halt.wait(self.period)

    def finish(self):
        self.halt.set()
        self.join(timeout=15)
        return self

    def worst(self):
        return max((s for _, s, _ in self.samples), default=0.0)

    def failures(self):
        return [st for _, _, st in self.samples if st != 200]

    def summary(self):
        if not self.samples:
            return "other tenant: no samples"
        parts = []
        for path in ("/healthz", "/v1/jobs"):
            lat = sorted(s for p, s, _ in self.samples if p == path)
            if lat:
                parts.append(f"{path} p50 {ms(lat[len(lat) // 2])} max {ms(lat[-1])}")
        bad = self.failures()
        tail = f", {len(bad)} not 200 ({sorted(set(bad))})" if bad else ""
        return f"other tenant ({len(self.samples)} req): " + ", ".join(parts) + tail


def ms(seconds):
    return f"{seconds * 1000:.0f} ms"


def mib(n):
    return f"{n / MB:.1f} MiB"


def now_plus(seconds):
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parallel(n, fn):
    """Runs fn(i) for i in range(n) on n threads released together."""
    barrier = threading.Barrier(n)
    out = [None] * n

    def run(i):
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def counts(resps):
    c = {}
    for r in resps:
        k = r.brief() if r is not None else "thread did not finish"
        k = re.sub(r"\(.*\)", "(...)", k)
        c[k] = c.get(k, 0) + 1
    return ", ".join(f"{v}x {k}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- checks


class Check:
    def __init__(self, id, attack, expected, fn, fast):
        self.id, self.attack, self.expected, self.fn, self.fast = id, attack, expected, fn, fast


CHECKS = []


def check(id, attack, expected, fast=True):
    def deco(fn):
        CHECKS.append(Check(id, attack, expected, fn, fast))
        return fn

    return deco


class Ctx:
    def __init__(self, binary, workdir, fast):
        self.binary, self.workdir, self.fast = binary, workdir, fast
        self.servers = []

    def server(self):
        srv = Server(self.binary, self.workdir).start()
        self.servers.append(srv)
        return srv

    def close(self):
        for s in self.servers:
            s.stop()
        self.servers = []


def hostile_token_bin(binary):
    env = os.environ.get("MURMUR_HOSTILE_TOKEN_BIN")
    if env:
        return Path(env)
    return Path(binary).resolve().parent / "examples" / "hostile_token"


@check(
    "1a",
    "login token + appended biscuit block (~70 facts, 4-way join rule), 4 requests at once",
    "401 in < 500 ms each; other tenant's /healthz, /v1/jobs < 1 s meanwhile",
)
def hostile_block(ctx):
    tool = hostile_token_bin(ctx.binary)
    if not tool.exists():
        return None, f"SKIP: no {tool} (cargo build --example hostile_token, or set MURMUR_HOSTILE_TOKEN_BIN)"
    srv = ctx.server()
    a, b = srv.signup("Attacker"), srv.signup("Victim")
    made = subprocess.run([str(tool), a.token], capture_output=True, text=True, timeout=60)
    hostile = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
    if made.returncode != 0 or not hostile:
        raise HarnessError(f"hostile_token failed: {made.stderr.strip()[-300:]}")
    probe = Probe(srv, b.token, period=0.05)
    probe.start()
    time.sleep(0.3)
    resps = parallel(4, lambda i: srv.get("/v1/jobs", hostile, timeout=60))
    probe.finish()
    slowest = max(r.elapsed for r in resps)
    ok = all(r.status == 401 for r in resps) and slowest < 0.5 and probe.worst() < 1.0 and not probe.failures()
    return ok, f"{counts(resps)}, slowest {ms(slowest)}; {probe.summary()}"


@check("1b", "Authorization: Bearer <1 MB token>", "401 or 431 within 1 s")
def huge_token(ctx):
    srv = ctx.server()
    r = srv.get("/v1/jobs", "A" * MB, timeout=20)
    return r.status in (401, 431) and r.elapsed < 1.0, f"{r.brief()} in {ms(r.elapsed)}"


@check("1c", "Bearer tokens that are not biscuits (garbage, base64 of junk)", "401 unauthorized problem for each")
def garbage_token(ctx):
    srv = ctx.server()
    out, ok = [], True
    for tok in ("!!!not*base64$$", base64.urlsafe_b64encode(os.urandom(300)).decode(), "En0KEwoEdGVzdA=="):
        r = srv.get("/v1/jobs", tok, timeout=10)
        ok &= r.status == 401 and r.is_problem()
        out.append(f"{r.brief()} in {ms(r.elapsed)}")
    return ok, "; ".join(out)


@check(
    "2",
    "basic tenant uploads a 3 h FLAC of silence (~140 KB; tier max_audio_seconds 60)",
    "refused at upload for its length (4xx naming the duration); server VmHWM +< 50 MiB",
)
def long_audio(ctx):
    srv = ctx.server()
    a = srv.signup("Long")
    flac = silent_flac(3 * 3600)
    rss0, _ = srv.memory()
    peak_reset = srv.reset_peak()
    r = srv.upload_file(a.token, "three-hours.flac", flac, "audio/flac")
    rss1, hwm = srv.memory()
    growth = (hwm if peak_reset else rss1) - rss0
    detail = f"{(r.json() or {}).get('detail', '')}"
    about_length = r.code != "invalid_audio" and re.search(r"second|duration|long|length", f"{r.code} {detail}", re.I)
    ok = 400 <= r.status < 500 and r.status != 401 and bool(about_length) and growth < 50 * MB
    got = f"{len(flac) // 1024} KB upload: {r.brief()}"
    if r.status == 201:
        got += f" (duration_s {r.json().get('duration_s')})"
    got += f"; {'peak' if peak_reset else 'RSS'} growth {mib(growth)}"
    if srv.note:
        got += f"; {srv.note}"
    if r.status == 201 and not ctx.fast and srv.model_installed(a.token):
        # What accepting it costs: the job decodes 3 h (691 MB of f32).
        fid = r.json()["id"]
        srv.reset_peak()
        base_rss, _ = srv.memory()
        jr = srv.post("/v1/jobs", {"file_id": fid, "params": {"model": "tiny"}}, a.token)
        t_end = time.monotonic() + 20
        while time.monotonic() < t_end and srv.alive():
            time.sleep(0.5)
        _, hwm2 = srv.memory()
        if jr.status == 202:
            srv.post(f"/v1/jobs/{jr.json()['id']}/cancel", {}, a.token)
        got += f"; its tiny job ({jr.brief()}) peaked at +{mib(hwm2 - base_rss)} within 20 s"
    return ok, got


@check(
    "3",
    "premium tenant uploads a 700 s FLAC whose STREAMINFO claims 1 s",
    "422 inconsistent_audio (or the file metered at ~700 s)",
)
def lying_header(ctx):
    srv = ctx.server()
    a = srv.signup("Liar")
    srv.set_tier(a.id, "premium")
    honest = silent_flac(700)
    lying = flac_claim_samples(honest, 16000)
    assert flac_total_samples(lying) == 16000
    control = srv.upload_file(a.token, "honest.flac", honest, "audio/flac")
    if control.status != 201:
        raise HarnessError(f"the honest 700 s FLAC was refused: {control.brief()} {control.body[:200]!r}")
    r = srv.upload_file(a.token, "liar.flac", lying, "audio/flac")
    dur = (r.json() or {}).get("duration_s") if r.status == 201 else None
    ok = (r.status == 422 and r.code == "inconsistent_audio") or (r.status == 201 and (dur or 0) >= 690)
    got = f"{r.brief()}" + (f", recorded duration_s {dur}" if dur is not None else "")
    got += f" (honest copy: duration_s {control.json().get('duration_s')})"
    return ok, got


@check(
    "4a",
    "a `full` API key expiring in 4 s creates a user and a new API key",
    "403 for both (needs a login session); after 4 s nothing it made still works",
)
def key_escalation(ctx):
    srv = ctx.server()
    a = srv.signup("Keys")
    kr = srv.post("/v1/api-keys", {"name": "short", "scopes": ["full"], "expires_at": now_plus(4)}, a.token)
    if kr.status != 201:
        raise HarnessError(f"creating the key: {kr.brief()}")
    key = kr.json()["token"]
    t_expiry = time.monotonic() + 4
    ur = srv.post(
        "/v1/users",
        {"email": f"sock-{uuid.uuid4().hex[:8]}@abuse.example", "password": PASSWORD, "role": "admin"},
        key,
    )
    cr = srv.post("/v1/api-keys", {"name": "forever", "scopes": ["full"]}, key)
    got = f"create user: {ur.brief()}; create key: {cr.brief()}"
    child_alive = False
    if cr.status == 201:
        time.sleep(max(0.0, t_expiry - time.monotonic()) + 1.0)
        parent = srv.get("/v1/files", key)
        child = srv.get("/v1/files", cr.json()["token"])
        child_alive = child.status == 200
        got += f"; after expiry: key {parent.brief()}, the key it made {child.brief()}"
    ok = ur.status == 403 and cr.status == 403 and not child_alive
    return ok, got


@check("4b", "revoke an API key, then use it at once", "401 on the very next request")
def key_revoked(ctx):
    srv = ctx.server()
    a = srv.signup("Revoke")
    kr = srv.post("/v1/api-keys", {"name": "k", "scopes": ["jobs"]}, a.token)
    key, kid = kr.json()["token"], kr.json()["id"]
    before = srv.get("/v1/files", key)
    dr = srv.delete(f"/v1/api-keys/{kid}", a.token)
    t0 = time.monotonic()
    after = srv.get("/v1/files", key)
    ok = before.status == 200 and dr.status == 204 and after.status == 401
    return ok, f"before {before.brief()}, revoke {dr.brief()}, after {after.brief()} ({ms(time.monotonic() - t0)} after revoking)"


@check(
    "4c",
    "open /v1/ws with an API key, subscribe, then revoke the key",
    "the server closes the socket within 5 s of the revocation",
)
def ws_revoked(ctx):
    srv = ctx.server()
    a = srv.signup("Socket")
    kr = srv.post("/v1/api-keys", {"name": "ws", "scopes": ["read"]}, a.token)
    key, kid = kr.json()["token"], kr.json()["id"]
    ws = WebSocket(srv.addr, "/v1/ws", key)
    try:
        ws.send_text(json.dumps({"op": "subscribe", "topic": "tenant"}))
        ack = ws.recv(5)
        if not ack or "subscribed" not in ack:
            raise HarnessError(f"no subscribe ack: {ack!r} {ws.closed}")
        dr = srv.delete(f"/v1/api-keys/{kid}", a.token)
        t0 = time.monotonic()
        # Keep talking like a live client, so a server that checks on each
        # message gets its chance too.
        while ws.closed is None and time.monotonic() - t0 < 5:
            ws.send_text(json.dumps({"op": "subscribe", "topic": "tenant"}))
            ws.recv(1)
        took = time.monotonic() - t0
        if ws.closed:
            return True, f"revoke {dr.brief()}; closed after {ms(took)}: {ws.closed}"
        return False, f"revoke {dr.brief()}; still open and answering {took:.1f} s later"
    finally:
        ws.close()


@check(
    "4d",
    "owner deletes a member (DELETE /v1/users/{id}); the member's login token is used again",
    "204, then the member's token and password get 401",
)
def user_deleted(ctx):
    srv = ctx.server()
    a = srv.signup("Owner")
    email = f"member-{uuid.uuid4().hex[:8]}@abuse.example"
    cr = srv.post("/v1/users", {"email": email, "password": PASSWORD, "role": "member"}, a.token)
    if cr.status != 201:
        raise HarnessError(f"creating a member: {cr.brief()}")
    uid = cr.json()["id"]
    lr = srv.login(email)
    mtoken = (lr.json() or {}).get("token")
    if not mtoken:
        raise HarnessError(f"member login: {lr.brief()}")
    before = srv.get("/v1/me", mtoken)
    dr = srv.delete(f"/v1/users/{uid}", a.token)
    after = srv.get("/v1/files", mtoken)
    relog = srv.login(email)
    ok = before.status == 200 and dr.status in (200, 204) and after.status == 401 and relog.status == 401
    return ok, f"delete {dr.brief()}; member token then {after.brief()}; member login {relog.brief()}"


def _text_fields(n, size):
    chunk = b"x" * size
    for i in range(n):
        yield (f"field{i}", None, None, chunk)


@check(
    "5a",
    "upload with 2,000 extra text fields of 60 KB (120 MB, chunked, no Content-Length), file last",
    "refused (400/413/422); VmHWM +< 50 MiB; other tenant < 1 s",
    fast=False,
)
def multipart_fields(ctx):
    srv = ctx.server()
    a, b = srv.signup("Fields"), srv.signup("Bystander")
    wav = tone_wav(1.0)
    parts = list(_text_fields(2000, 60 * 1024)) + [("file", "a.wav", "audio/wav", wav)]
    rss0, _ = srv.memory()
    peak_reset = srv.reset_peak()
    probe = Probe(srv, b.token)
    probe.start()
    r = srv.upload(a.token, parts, chunked=True, timeout=120)
    probe.finish()
    rss1, hwm = srv.memory()
    growth = (hwm if peak_reset else rss1) - rss0
    ok = r.status in (400, 413, 422) and growth < 50 * MB and probe.worst() < 1.0
    return ok, f"{r.brief()} after {r.elapsed:.1f} s; peak growth {mib(growth)}; {probe.summary()}"


@check("5b", "upload a valid WAV plus a field with an unknown name", "400 invalid_request naming the field")
def multipart_unknown(ctx):
    srv = ctx.server()
    a = srv.signup("Unknown")
    r = srv.upload(a.token, [("file", "a.wav", "audio/wav", tone_wav(1.0)), ("evil", None, None, b"x")])
    return r.status in (400, 422), f"{r.brief()}: {(r.json() or {}).get('detail', '')[:80]}"


@check(
    "6",
    "10 parallel 300 KB uploads by one basic tenant (quota 1,000,000 bytes)",
    "stored total <= quota (GET /v1/usage and the file list)",
)
def quota_race(ctx):
    srv = ctx.server()
    a = srv.signup("Racer")
    wav = tone_wav(300_000 / 32000)
    resps = parallel(10, lambda i: srv.upload_file(a.token, f"r{i}.wav", wav))
    usage = srv.get("/v1/usage", a.token).json() or {}
    files = (srv.get("/v1/files?limit=100", a.token).json() or {}).get("items", [])
    listed = sum(f.get("size", 0) for f in files)
    used = usage.get("storage_bytes", -1)
    ok = 0 <= used <= 1_000_000 and listed <= 1_000_000
    return ok, f"{counts(resps)}; usage storage_bytes {used}, files listed {len(files)} = {listed} bytes"


@check(
    "7",
    "64 parallel logins with wrong passwords for one account (all from 127.0.0.1)",
    "429 rate_limited with Retry-After; VmHWM +< 100 MiB; another account's login: 200 or a clear 429",
)
def login_flood(ctx):
    srv = ctx.server()
    victim, other, b = srv.signup("Victim"), srv.signup("Other"), srv.signup("Bystander")
    rss0, _ = srv.memory()
    peak_reset = srv.reset_peak()
    probe = Probe(srv, b.token)
    probe.start()
    resps = parallel(64, lambda i: srv.login(victim.email, f"wrong password {i}"))
    probe.finish()
    rss1, hwm = srv.memory()
    growth = (hwm if peak_reset else rss1) - rss0
    limited = [r for r in resps if r and r.status == 429]
    clear = [r for r in limited if r.code == "rate_limited" and r.header("retry-after")]
    own = srv.login(victim.email)
    oth = srv.login(other.email)
    other_ok = oth.status == 200 or (oth.status == 429 and oth.code == "rate_limited" and oth.header("retry-after"))
    ok = bool(clear) and len(clear) == len(limited) and growth < 100 * MB and bool(other_ok)
    ra = clear[0].header("retry-after") if clear else None
    return ok, (
        f"{counts(resps)}" + (f" (Retry-After {ra})" if ra else "")
        + f"; peak growth {mib(growth)}; then right password: victim {own.brief()}, other account "
        + f"{oth.brief()}" + (f" Retry-After {oth.header('retry-after')}" if oth.status == 429 else "")
        + f"; {probe.summary()}"
    )


SLOWLORIS_SOCKETS = 200
SLOWLORIS_WAIT = 40.0


@check(
    "8",
    f"slowloris: {SLOWLORIS_SOCKETS} sockets each send half a request header, then nothing",
    f"all closed by the server's header timeout (within {SLOWLORIS_WAIT:.0f} s); /healthz < 1 s meanwhile",
    fast=False,
)
def slowloris(ctx):
    srv = ctx.server()
    b = srv.signup("Bystander")
    socks = []
    try:
        for i in range(SLOWLORIS_SOCKETS):
            s = socket.create_connection(srv.addr, timeout=5)
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: ".encode())
            socks.append(s)
        t0 = time.monotonic()
        probe = Probe(srv, b.token, period=0.25)
        probe.start()
        open_, closed_at, answered = set(socks), [], 0
        while open_ and time.monotonic() - t0 < SLOWLORIS_WAIT:
            ready, _, _ = select.select(list(open_), [], [], 0.5)
            for s in ready:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 4"):
                    answered += 1
                open_.discard(s)
                closed_at.append(time.monotonic() - t0)
        probe.finish()
        n = len(closed_at)
        when = f", the last after {closed_at[-1]:.1f} s" if closed_at else ""
        ok = not open_ and probe.worst() < 1.0 and not probe.failures()
        return ok, (
            f"{n}/{SLOWLORIS_SOCKETS} closed by the server ({answered} with a 4xx){when}; "
            f"{len(open_)} still open after {time.monotonic() - t0:.0f} s; {probe.summary()}"
        )
    finally:
        for s in socks:
            s.close()


@check("9a", "2 MB JSON body with Content-Length (POST /v1/auth/login)", "413 with a problem+json body")
def json_big(ctx):
    srv = ctx.server()
    body = b'{"email":"a@b.example","password":"' + b"x" * (2 * MB) + b'"}'
    r = srv.req("POST", "/v1/auth/login", headers={"Content-Type": "application/json"}, body=body)
    return r.status == 413 and r.is_problem(), f"{r.brief()} in {ms(r.elapsed)}"


@check("9b", "signup with a small chunked JSON body (no Content-Length)", "accepted (201), not 405/411")
def json_chunked_ok(ctx):
    srv = ctx.server()
    body = json.dumps({"tenant": "Chunky", "email": f"c-{uuid.uuid4().hex[:8]}@abuse.example", "password": PASSWORD})
    r = srv.req("POST", "/v1/auth/signup", headers={"Content-Type": "application/json"}, body=body.encode(), chunked=True)
    return r.status in (200, 201, 202), r.brief()


@check("9c", "2 MB chunked JSON body (no Content-Length) to POST /v1/auth/login", "413 with a problem+json body")
def json_chunked_big(ctx):
    srv = ctx.server()
    pieces = [b'{"email":"a@b.example","password":"'] + [b"x" * 65536] * 32 + [b'"}']
    r = srv.req("POST", "/v1/auth/login", headers={"Content-Type": "application/json"}, body=pieces, chunked=True)
    return r.status == 413 and r.is_problem(), f"{r.brief()} in {ms(r.elapsed)}"


HOSTILE_NAME = 'r\u00e9sum\u00e9 \\"q\\" \u65e5\u672c\tx.html'


@check(
    "10",
    'upload a WAV as Content-Type text/html named r\u00e9sum\u00e9 "q" \u65e5\u672c<TAB>x.html, download it',
    "served as audio/* or octet-stream, nosniff, attachment with ASCII filename + RFC 5987 filename*",
)
def download_headers(ctx):
    srv = ctx.server()
    a = srv.signup("Html")
    r = srv.upload(a.token, [("file", HOSTILE_NAME, "text/html", tone_wav(0.5))])
    if r.status != 201:
        raise HarnessError(f"upload answered {r.brief()}")
    fid = r.json()["id"]
    d = srv.get(f"/v1/files/{fid}/content", a.token)
    ctype = d.header("content-type") or ""
    nosniff = (d.header("x-content-type-options") or "").lower() == "nosniff"
    disp = d.header("content-disposition") or ""
    safe_type = ctype.startswith("audio/") or ctype.startswith("application/octet-stream")
    ascii_only = all(32 <= ord(c) < 127 for c in disp)
    encoded = "filename*=utf-8''" in disp.lower()
    ok = d.status == 200 and safe_type and nosniff and disp.startswith("attachment") and ascii_only and encoded
    return ok, (
        f"stored name {r.json().get('name')!r}; GET content {d.status}: Content-Type {ctype!r}, "
        f"nosniff {'yes' if nosniff else 'no'}, Content-Disposition {disp!r}"
    )


def _a_resources(srv, a):
    """Tenant A's file, workflow, key, member user and (when the tiny model
    is installed) job."""
    fr = srv.upload_file(a.token, "a.wav", tone_wav(1.0))
    wr = srv.post("/v1/workflows", {"name": "a-flow", "params": {"model": "tiny"}}, a.token)
    kr = srv.post("/v1/api-keys", {"name": "a-key", "scopes": ["read"]}, a.token)
    ur = srv.post("/v1/users", {"email": f"am-{uuid.uuid4().hex[:8]}@abuse.example", "password": PASSWORD, "role": "member"}, a.token)
    for what, r, want in (("file", fr, 201), ("workflow", wr, 201), ("key", kr, 201), ("user", ur, 201)):
        if r.status != want:
            raise HarnessError(f"tenant A's {what}: {r.brief()}")
    res = {"file": fr.json()["id"], "workflow": wr.json()["id"], "key": kr.json()["id"], "user": ur.json()["id"]}
    if srv.model_installed(a.token):
        jr = srv.post("/v1/jobs", {"file_id": res["file"], "params": {"model": "tiny"}}, a.token)
        if jr.status != 202:
            raise HarnessError(f"tenant A's job: {jr.brief()}")
        res["job"] = jr.json()["id"]
    return res


@check(
    "11a",
    "tenant B reads, changes, cancels, deletes and subscribes to tenant A's ids (every id-taking route)",
    "404 not_found for each (never 403/409/2xx); A's items intact afterwards",
)
def cross_tenant_ids(ctx):
    srv = ctx.server()
    a, b = srv.signup("Alpha"), srv.signup("Beta")
    ids = _a_resources(srv, a)
    bfile = srv.upload_file(b.token, "b.wav", tone_wav(0.5)).json()["id"]
    f, w, k, u = ids["file"], ids["workflow"], ids["key"], ids["user"]
    attempts = [
        ("GET", f"/v1/files/{f}", None),
        ("GET", f"/v1/files/{f}/content", None),
        ("DELETE", f"/v1/files/{f}", None),
        ("POST", "/v1/jobs", {"file_id": f}),
        ("POST", "/v1/jobs", {"file_id": bfile, "workflow_id": w}),
        ("GET", f"/v1/workflows/{w}", None),
        ("PUT", f"/v1/workflows/{w}", {"name": "mine now"}),
        ("DELETE", f"/v1/workflows/{w}", None),
        ("DELETE", f"/v1/api-keys/{k}", None),
        ("DELETE", f"/v1/users/{u}", None),
        ("DELETE", f"/v1/users/{a.user_id}", None),
    ]
    if "job" in ids:
        j = ids["job"]
        attempts += [
            ("GET", f"/v1/jobs/{j}", None),
            ("POST", f"/v1/jobs/{j}/cancel", {}),
            ("GET", f"/v1/jobs/{j}/events", None),
            ("GET", f"/v1/jobs/{j}/result", None),
            ("GET", f"/v1/jobs/{j}/stems/vocals", None),
        ]
    bad = []
    for method, path, body in attempts:
        r = srv.req(method, path, b.token, json_body=body)
        if not (r.status == 404 and r.code == "not_found"):
            bad.append(f"{method} {path.replace(a.user_id, '<A owner>')} -> {r.brief()}")
        elif method == "DELETE" and path.startswith("/v1/users/") and (r.json() or {}).get("detail") == "route not found":
            bad.append(f"{method} /v1/users/<id> -> 404 only because the route does not exist")
    ws_note = ""
    if "job" in ids:
        ws = WebSocket(srv.addr, "/v1/ws", b.token)
        try:
            ws.send_text(json.dumps({"op": "subscribe", "topic": f"job:{ids['job']}", "after": 0}))
            msg = ws.recv(5) or ""
            if '"not_found"' not in msg:
                bad.append(f"ws subscribe job:<A's> -> {msg[:80]!r}")
        finally:
            ws.close()
    else:
        ws_note = "; jobs not covered: the tiny model is not installed in the cache"
    intact = [
        (srv.get(f"/v1/files/{f}", a.token).status, "file"),
        (srv.get(f"/v1/workflows/{w}", a.token).status, "workflow"),
        (srv.get(f"/v1/me", a.token).status, "owner"),
    ]
    keys = (srv.get("/v1/api-keys", a.token).json() or {}).get("items", [])
    users = (srv.get("/v1/users", a.token).json() or {}).get("items", [])
    lost = [what for st, what in intact if st != 200]
    if k not in [x.get("id") for x in keys]:
        lost.append("key")
    if u not in [x.get("id") for x in users]:
        lost.append("member user")
    ok = not bad and not lost
    got = f"{len(attempts) - len(bad)}/{len(attempts)} answered 404"
    if bad:
        got += "; wrong: " + "; ".join(bad)
    got += f"; A lost: {', '.join(lost)}" if lost else "; A's items intact"
    return ok, got + ws_note


@check(
    "11b",
    "tenant B lists and counts (files, jobs, workflows, keys, users, usage), also with A's ids as cursor",
    "none of A's ids or bytes appear",
)
def cross_tenant_lists(ctx):
    srv = ctx.server()
    a, b = srv.signup("Alpha"), srv.signup("Beta")
    ids = _a_resources(srv, a)
    secret_ids = set(ids.values()) | {a.id, a.user_id}
    leaks = []
    paths = ["/v1/files", "/v1/jobs", "/v1/workflows", "/v1/api-keys", "/v1/users", "/v1/usage", "/v1/subscription", "/v1/me"]
    for p in ["/v1/files", "/v1/jobs", "/v1/workflows", "/v1/api-keys", "/v1/users"]:
        for v in ids.values():
            paths.append(f"{p}?cursor={v}")
    for p in paths:
        r = srv.get(p, b.token)
        text = r.body.decode(errors="replace")
        found = [i for i in secret_ids if i in text]
        if found:
            leaks.append(f"{p.split('?')[0]}{'?cursor' if '?' in p else ''} shows {len(found)} of A's ids")
        if p == "/v1/usage" and (r.json() or {}).get("storage_bytes", 0) != 0:
            leaks.append(f"usage storage_bytes {(r.json() or {}).get('storage_bytes')} (B stored nothing)")
    ok = not leaks
    got = f"{len(paths)} requests; " + ("; ".join(sorted(set(leaks))) if leaks else "no A ids in any answer")
    if "job" not in ids:
        got += "; no job of A's (the tiny model is not installed)"
    return ok, got


@check(
    "12",
    "signup with an email that already has an account, and with a new one",
    "the same status and body shape for both",
)
def signup_enumeration(ctx):
    srv = ctx.server()
    a = srv.signup("Existing")

    def attempt(email, tenant):
        return srv.post("/v1/auth/signup", {"tenant": tenant, "email": email, "password": "another password 42"})

    old = attempt(a.email, "Copycat")
    new = attempt(f"fresh-{uuid.uuid4().hex[:8]}@abuse.example", "Fresh")

    def shape(r):
        j = r.json()
        return sorted(j.keys()) if isinstance(j, dict) else type(j).__name__

    ok = old.status == new.status and shape(old) == shape(new)
    return ok, (
        f"existing: {old.brief()} {shape(old)} in {ms(old.elapsed)}; "
        f"new: {new.brief()} {shape(new)} in {ms(new.elapsed)}"
    )


# ---------------------------------------------------------------- runner


def select_checks(only, fast):
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        chosen = [c for c in CHECKS if any(c.id == w or re.fullmatch(re.escape(w) + r"[a-z]", c.id) for w in wanted)]
        unknown = [w for w in wanted if not any(c.id == w or re.fullmatch(re.escape(w) + r"[a-z]", c.id) for c in CHECKS)]
        if unknown:
            sys.exit(f"abuse: no check {', '.join(unknown)} (see --list)")
        return chosen
    return [c for c in CHECKS if c.fast or not fast]


def table_text(rows):
    widths = {"id": 4, "result": 6, "attack": 38, "expected": 38, "got": 60}
    cols = list(widths)
    out = ["  ".join(c.upper().ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    for row in rows:
        cells = {c: textwrap.wrap(row[c], widths[c]) or [""] for c in cols}
        height = max(len(v) for v in cells.values())
        for i in range(height):
            out.append("  ".join((cells[c][i] if i < len(cells[c]) else "").ljust(widths[c]) for c in cols).rstrip())
    return "\n".join(out)


def table_markdown(rows):
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")
    out = ["| id | attack | expected | got | result |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['id']} | {esc(r['attack'])} | {esc(r['expected'])} | {esc(r['got'])} | **{r['result']}** |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the checks that take a few seconds each")
    ap.add_argument("--only", help="comma-separated check ids (4 means 4a, 4b, ...)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--keep", action="store_true", help="keep the servers' temp dirs (logs) for a look")
    args = ap.parse_args()
    if args.list:
        for c in CHECKS:
            print(f"{c.id:4} {'fast' if c.fast else 'slow'}  {c.attack}")
        return 0
    binary = os.environ.get("MURMUR_BIN", "target/debug/murmur")
    if not os.access(binary, os.X_OK):
        sys.exit(f"abuse: no murmur binary at {binary} (build it, or set MURMUR_BIN)")
    checks = select_checks(args.only, args.fast)
    workdir = tempfile.mkdtemp(prefix="murmur-abuse-")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    rows = []
    try:
        for n, c in enumerate(checks, 1):
            print(f"abuse: [{n}/{len(checks)}] {c.id} {c.attack[:70]}", file=sys.stderr, flush=True)
            ctx = Ctx(binary, workdir, args.fast)
            t0 = time.monotonic()
            try:
                ok, got = c.fn(ctx)
                result = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
                for s in ctx.servers:
                    if not s.alive():
                        result, got = "FAIL", got + f"; the server died (exit {s.proc.returncode})"
            except HarnessError as e:
                result, got = "FAIL", f"harness: {e}"
            except Exception as e:  # a bug here must not hide the other checks
                result, got = "FAIL", f"harness error {type(e).__name__}: {e}"
            finally:
                ctx.close()
            secs = time.monotonic() - t0
            rows.append({"id": c.id, "attack": c.attack, "expected": c.expected, "got": got, "result": result, "secs": secs})
            print(f"abuse:        {result} in {secs:.1f} s", file=sys.stderr, flush=True)
    finally:
        _kill_all()
        if args.keep:
            print(f"abuse: servers' dirs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table_markdown(rows) if args.markdown else table_text(rows))
    tally = {k: sum(1 for r in rows if r["result"] == k) for k in ("PASS", "FAIL", "SKIP")}
    print(f"\nabuse: {tally['PASS']} passed, {tally['FAIL']} failed, {tally['SKIP']} skipped")
    return 1 if tally["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
