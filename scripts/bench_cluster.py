#!/usr/bin/env python3
"""Dispatch overhead of a worker node: the same jobs on one local worker
against one worker node on loopback, side by side in one run.

  local   `murmur serve` with models.workers = 1
  remote  `murmur serve` with models.workers = 0 and cluster.listen on
          loopback, plus one `murmur worker --join` process (models.workers
          = 1), both from the same release build

Each --runs round starts both setups fresh, warms the model with one job,
then runs --jobs jobs one after another (submit, poll every 20 ms until
completed) on JFK (11 s, tiny.en, VAD off, greedy): what is measured is
the time from submission to completion per job (median), and for the
remote setup the audio bytes the control node sent per job
(`murmur_cluster_audio_bytes_sent_total`) and the bytes both processes
wrote to and read from anything per job (/proc/PID/io wchar and rchar:
sockets plus the worker's spool file), as an upper bound on what crossed.

Usage: scripts/bench-cluster [--jobs 10] [--runs 3] [--model tiny.en]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import murmur_harness as harness  # noqa: E402

COOKIE = "bench-cluster-cookie-0123456789"


def io_bytes(pid):
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out["rchar"] + out["wchar"]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(binary, workdir, model, remote):
    port = free_port()
    cluster = f'\n[cluster]\nlisten = "127.0.0.1:{port}"\ncookie = "{COOKIE}"\n' if remote else ""
    srv = harness.Server(binary, workdir, audio_limits=False, prefix="murmur-bench-cluster-",
                         model=model, models={"workers": 0 if remote else 1}, extra_toml=cluster)
    srv.start()
    worker = None
    if remote:
        env = dict(
            os.environ,
            MURMUR__MODELS__DIR=str(harness.cache_dir() / "models"),
            MURMUR__MODELS__FETCH_MISSING="false",
            MURMUR__MODELS__WORKERS="1",
            MURMUR__MODELS__CACHE_DIR=str(srv.dir / "worker-cache"),
            MURMUR__CLUSTER__COOKIE=COOKIE,
            RUST_LOG="warn",
        )
        worker = subprocess.Popen(
            [binary, "worker", "--join", f"127.0.0.1:{port}", "--name", "bench"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        op = json.loads((srv.dir / "data" / "operator.json").read_text())["token"]
        deadline = time.time() + 60
        while not srv.get("/v1/ops/workers", op).json()["workers"]:
            if time.time() > deadline:
                raise SystemExit("the worker node never joined")
            time.sleep(0.1)
    return srv, worker


def run_jobs(srv, worker, model, wav, jobs):
    t = srv.signup("Bench")
    srv.set_tier(t.id, "enterprise")
    tok = srv.login(t.email).json()["token"]
    fid = srv.upload_file(tok, "jfk.wav", wav).json()["id"]
    params = {"model": model, "vad": {"enabled": False}}

    def one():
        t0 = time.perf_counter()
        jid = srv.post("/v1/jobs", {"file_id": fid, "params": params}, tok).json()["id"]
        while True:
            st = srv.get(f"/v1/jobs/{jid}", tok).json()["status"]
            if st == "completed":
                return time.perf_counter() - t0
            if st in ("failed", "cancelled"):
                raise SystemExit(f"job {jid} ended {st}")
            time.sleep(0.02)

    one()  # loads the model
    pids = [srv.proc.pid] + ([worker.pid] if worker else [])
    io0 = sum(io_bytes(p) for p in pids)
    m0 = audio_sent(srv)
    times = [one() for _ in range(jobs)]
    io1 = sum(io_bytes(p) for p in pids)
    m1 = audio_sent(srv)
    return times, (m1 - m0) / jobs, (io1 - io0) / jobs


def audio_sent(srv):
    for line in srv.get("/metrics").body.decode().splitlines():
        if line.startswith("murmur_cluster_audio_bytes_sent_total"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="tiny.en")
    a = ap.parse_args()
    wav_path = subprocess.run([a.binary, "test-audio", "jfk"], capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]
    wav = Path(wav_path).read_bytes()
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))
    print(f"bench-cluster {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}: {a.model}, JFK "
          f"({len(wav)} bytes), {a.jobs} jobs per setup, runs {a.runs}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    res = {"local": [], "remote": []}
    extra = []
    for run in range(1, a.runs + 1):
        for name in ("local", "remote"):
            print(f"  run {run}: {name}", file=sys.stderr, flush=True)
            srv, worker = setup(a.binary, workdir, a.model, name == "remote")
            try:
                times, audio, io = run_jobs(srv, worker, a.model, wav, a.jobs)
            finally:
                if worker:
                    worker.terminate()
                    worker.wait(10)
                srv.stop()
            res[name].append(statistics.median(times))
            if name == "remote":
                extra.append((audio, io))
    med = statistics.median
    loc, rem = med(res["local"]), med(res["remote"])
    print()
    print(f"median seconds per job, submission to completion: local {loc:.3f}, remote {rem:.3f}")
    print(f"remote / local: {rem / loc:.3f} (run by run "
          f"{', '.join(f'{r / l:.3f}' for l, r in zip(res['local'], res['remote']))}); "
          f"added per job: {1000 * (rem - loc):.0f} ms")
    print(f"audio bytes sent to the worker node per job: {med(e[0] for e in extra):.0f} "
          f"(the upload is {len(wav)} bytes)")
    print(f"bytes read and written by both processes per job (sockets, spool): "
          f"{med(e[1] for e in extra):.0f}")


if __name__ == "__main__":
    main()
