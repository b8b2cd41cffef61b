#!/usr/bin/env python3
"""The harness scripts/abuse and scripts/load drive Murmur with: the real
`murmur serve` binary on 127.0.0.1 with a temporary data dir and the small
test tier table, an HTTP/1.1 client on raw sockets, a minimal RFC 6455
WebSocket client, and audio made here.

Limits, on purpose:
- Python 3 standard library only (no pip). The HTTP client opens one
  connection per request (Connection: close) and sends bodies from a second
  thread, so an answer that comes before the body is sent is still read;
  it never raises for network trouble (the answer has status 0 and says why).
- Everything targets 127.0.0.1; every request has a timeout; every server
  is stopped when its user is done (and at exit).
- Audio: WAV tones, and FLACs of silence written with CONSTANT subframes
  (hours of audio in a few hundred KB), valid for any decoder; no ffmpeg.
- Memory is read from /proc/PID/status (VmRSS, VmHWM); `reset_peak` writes
  5 to /proc/PID/clear_refs so a later VmHWM is the peak since then.
- A server can be killed (SIGKILL) and started again on the same data dir
  and port (`kill`, `restart`), for scripts/soak; its stderr log is kept
  across starts.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import hashlib
import json
import math
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

PASSWORD = "correct horse battery staple"
MB = 1024 * 1024
# The Whisper model jobs use: the smallest one the registries carry.
MODEL = "tiny.en"

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

    def __init__(self, binary, workdir, audio_limits=True, tiers=TIERS, prefix="murmur-abuse-",
                 model=MODEL, models=None, extra_toml=""):
        """`model`: the default Whisper model; `models`: more `[models]`
        settings ({"workers": 2}); `extra_toml`: sections appended to the
        settings file (a benchmark's `[cluster]`)."""
        self.binary = binary
        self.tiers = tiers
        self.model = model
        self.models = models or {}
        self.extra_toml = extra_toml
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
        self.proc = None
        self.addr = None
        self.note = ""
        self.audio_limits = audio_limits
        # 0 until the first start; then the port it got, kept by `restart`.
        self.port = 0
        self.starts = 0

    def _write_config(self, audio_limits):
        tiers = self.tiers.format(
            **{
                f"audio_{t}": (f"max_audio_seconds = {s}" if audio_limits else "")
                for t, s in AUDIO_LIMITS.items()
            }
        )
        (self.dir / "tiers.toml").write_text(tiers)
        models = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.models.items())
        cfg = f"""
[server]
listen = "127.0.0.1:{self.port}"
[store]
data_dir = {json.dumps(str(self.dir / "data"))}
[models]
dir = {json.dumps(str(cache_dir() / "models"))}
fetch_missing = false
default_model = {json.dumps(self.model)}
{models}[jobs]
backoff_base = 200
[billing]
tiers_file = {json.dumps(str(self.dir / "tiers.toml"))}
"""
        (self.dir / "murmur.toml").write_text(cfg + self.extra_toml)

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
        # Appended: a restarted server's log follows the killed one's.
        err = open(self.dir / "stderr.log", "ab")
        log_start = err.tell()
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"), RUST_BACKTRACE="0")
        # Production password cost (the config default): the login flood
        # must cost what it costs in production.
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.dir / "murmur.toml"), "serve"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=self.dir,
        )
        err.close()  # the child has its own copy
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
                self.port = self.addr[1]
                self.starts += 1
                return
        self.proc.kill()
        self.proc.wait()
        with open(self.dir / "stderr.log", "rb") as f:
            f.seek(log_start)
            log = f.read().decode(errors="replace")
        why = [l for l in log.splitlines() if re.search(r"error|panic|unknown field", l, re.I)]
        raise HarnessError(f"murmur did not start: {' | '.join(why[:3]) or log[-500:].strip()}")

    def stop(self, timeout=5):
        """SIGTERM, then SIGKILL after `timeout` s. Answers whether it
        ended by itself."""
        clean = True
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
                self.proc.kill()
                self.proc.wait()
        if self in _LIVE:
            _LIVE.remove(self)
        return clean

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL, as a power cut would: no flush, no shutdown hook."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait()

    def restart(self, attempts=20):
        """Starts the binary again on the same data dir and port (after
        `kill` or `stop`); retries while the port is still held."""
        for i in range(attempts):
            try:
                self._spawn(self.audio_limits and not self.note)
                break
            except HarnessError as e:
                if "in use" not in str(e).lower() or i == attempts - 1:
                    raise
                time.sleep(0.25)
        if self not in _LIVE:
            _LIVE.append(self)
        return self

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

    def model_installed(self, token, name=MODEL):
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
        kinds = sorted({"no answer in 10 s" if st == 0 else str(st) for st in bad})
        tail = f", {len(bad)} failed ({', '.join(kinds)})" if bad else ""
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
        if r is None:
            k = "thread did not finish"
        elif r.status:
            k = r.brief()
        else:
            k = f"no answer ({(r.error or '').split(':')[0]})"
        c[k] = c.get(k, 0) + 1
    return ", ".join(f"{v}x {k}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))
