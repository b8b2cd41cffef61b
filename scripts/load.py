#!/usr/bin/env python3
"""Murmur under HTTP load: p50/p99 latency, throughput and errors of the
list, status and upload endpoints, with and without a transcription job
running at the same time.

It starts `murmur serve` ($MURMUR_BIN, default target/debug/murmur) on
127.0.0.1 with a temporary data dir (scripts/murmur_harness.py), signs up
one tenant on a tier with room for thousands of small uploads, and drives
each endpoint with wrk (Debian's `wrk`, installed with apt-get when
missing) for a bounded time. "With a job" keeps one transcription of a
real recording (the tiny model from the shared cache) running through the
whole measurement, resubmitting when one ends, and says how many ran.

Limits: loopback only; each run lasts --seconds (default 15); the numbers
are for this machine (2 cores shared with the server, the load tool and
the model), so compare runs with each other, not with production.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import murmur_harness as harness  # noqa: E402

# The test tier table with a storage quota large enough that a 15 s upload
# run measures uploads, not quota refusals.
LOAD_TIERS = harness.TIERS.replace("storage_bytes = 100000000", "storage_bytes = 100000000000")


def ensure_wrk():
    if shutil.which("wrk"):
        return shutil.which("wrk")
    print("load: installing wrk (apt-get)", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        sudo + ["apt-get", "install", "-y", "-qq", "wrk"], check=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL,
    )
    return shutil.which("wrk")


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def parse_wrk(out):
    res = {"p50": None, "p99": None, "rps": None, "requests": 0, "non2xx": 0, "socket_errors": 0}
    for pct, key in (("50%", "p50"), ("99%", "p99")):
        m = re.search(rf"^\s+{pct}\s+(\S+)", out, re.M)
        if m:
            res[key] = to_ms(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def run_wrk(wrk, url, seconds, connections, token, script=None):
    cmd = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
           "-H", f"Authorization: Bearer {token}"]
    if script:
        cmd += ["-s", str(script)]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise harness.HarnessError(f"wrk failed: {out.stderr.strip()[-300:]}")
    return parse_wrk(out.stdout)


def upload_script(dirpath, wav):
    body = b"".join(harness.multipart([("file", "load.wav", "audio/wav", wav)]))
    (dirpath / "upload.body").write_bytes(body)
    lua = dirpath / "upload.lua"
    lua.write_text(
        f"""wrk.method = "POST"
local f = assert(io.open({json.dumps(str(dirpath / "upload.body"))}, "rb"))
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "{harness.MULTIPART_TYPE}"
"""
    )
    return lua


def speech_file(binary):
    """A real recording for the concurrent job: JFK (11 s) from the cache,
    else a 30 s tone."""
    try:
        out = subprocess.run([binary, "test-audio", "jfk"], capture_output=True, text=True, timeout=120)
        path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
        if path and Path(path).exists():
            return "jfk.wav", Path(path).read_bytes()
    except (subprocess.TimeoutExpired, OSError):
        pass
    return "tone.wav", harness.tone_wav(30.0)


class Transcriber(threading.Thread):
    """Keeps one transcription job running until stopped (bounded count)."""

    def __init__(self, srv, token, file_id, max_jobs=200):
        super().__init__(daemon=True)
        self.srv, self.token, self.file_id, self.max_jobs = srv, token, file_id, max_jobs
        self.halt = threading.Event()
        self.finished = {}
        self.error = None

    def run(self):
        for _ in range(self.max_jobs):
            if self.halt.is_set():
                return
            r = self.srv.post("/v1/jobs", {"file_id": self.file_id, "params": {"model": harness.MODEL}}, self.token)
            if r.status != 202:
                self.error = f"job submit {r.brief()}"
                return
            jid = r.json()["id"]
            while not self.halt.is_set():
                st = (self.srv.get(f"/v1/jobs/{jid}", self.token).json() or {}).get("status")
                if st in ("completed", "failed", "cancelled"):
                    self.finished[st] = self.finished.get(st, 0) + 1
                    break
                self.halt.wait(0.2)
            else:
                self.srv.post(f"/v1/jobs/{jid}/cancel", {}, self.token)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=15, help="length of each run (default 15)")
    ap.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    binary = os.environ.get("MURMUR_BIN", "target/debug/murmur")
    if not os.access(binary, os.X_OK):
        sys.exit(f"load: no murmur binary at {binary} (build it, or set MURMUR_BIN)")
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="murmur-load-"))
    rows = []
    srv = harness.Server(binary, str(work), tiers=LOAD_TIERS).start()
    try:
        t = srv.signup("Load")
        srv.set_tier(t.id, "enterprise")
        small = harness.tone_wav(0.25)
        for i in range(20):
            srv.upload_file(t.token, f"seed{i}.wav", small)
        model = srv.model_installed(t.token)
        name, speech = speech_file(binary)
        speech_id = srv.upload_file(t.token, name, speech).json()["id"] if model else None
        job_id = None
        if model:
            r = srv.post("/v1/jobs", {"file_id": speech_id, "params": {"model": harness.MODEL}}, t.token)
            job_id = r.json()["id"] if r.status == 202 else None
            # Let it finish (and the model load) before the idle runs.
            deadline = time.monotonic() + 180
            while job_id and time.monotonic() < deadline:
                st = (srv.get(f"/v1/jobs/{job_id}", t.token).json() or {}).get("status")
                if st in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.5)
        if not job_id:
            # A status target even without a model: any id of the tenant's
            # (a missing job answers 404 and is counted as an error).
            job_id = "j_missing"
        lua = upload_script(work, small)
        base = f"http://{srv.addr[0]}:{srv.addr[1]}"
        targets = [
            ("GET /v1/jobs (list)", f"{base}/v1/jobs", None),
            ("GET /v1/jobs/{id} (status)", f"{base}/v1/jobs/{job_id}", None),
            ("GET /v1/files (list)", f"{base}/v1/files", None),
            ("POST /v1/files (8 KB upload)", f"{base}/v1/files", lua),
        ]
        modes = [("idle", None)]
        if model:
            modes.append((f"with a tiny job on {name}", speech_id))
        else:
            print("load: the tiny model is not installed in the cache: no run with a job", file=sys.stderr)
        for mode, fid in modes:
            worker = None
            if fid:
                worker = Transcriber(srv, t.token, fid)
                worker.start()
                time.sleep(1.0)
            for label, url, script in targets:
                print(f"load: {label}, {mode}, {args.seconds} s", file=sys.stderr, flush=True)
                rss0, _ = srv.memory()
                srv.reset_peak()
                res = run_wrk(wrk, url, args.seconds, args.connections, t.token, script)
                _, hwm = srv.memory()
                res.update(endpoint=label, mode=mode, peak_mib=(hwm - rss0) / harness.MB)
                rows.append(res)
            if worker:
                worker.halt.set()
                worker.join(timeout=30)
                note = ", ".join(f"{v} {k}" for k, v in worker.finished.items()) or "none ended"
                if worker.error:
                    note += f" ({worker.error})"
                print(f"load: jobs during the '{mode}' runs: {note}", file=sys.stderr)
                for r in rows:
                    if r["mode"] == mode:
                        r["mode"] = f"{mode} ({note})"
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)

    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    header = ["endpoint", "load", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx", "socket errors", "peak +MiB"]
    lines = [[r["endpoint"], r["mode"], fmt(r["rps"], ".0f"), fmt(r["p50"], ".1f"), fmt(r["p99"], ".1f"),
              str(r["requests"]), str(r["non2xx"]), str(r["socket_errors"]), fmt(r["peak_mib"], ".1f")] for r in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for l in lines:
            print("| " + " | ".join(l) + " |")
    else:
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for l in lines:
            print("  ".join(c.ljust(w) for c, w in zip(l, widths)))
    print(f"\n{args.connections} connections, 2 wrk threads, {args.seconds} s per run, binary {binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
