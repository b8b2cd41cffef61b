#!/usr/bin/env python3
"""Murmur's crash soak: does everything a client was told was stored
survive `kill -9` at any moment?

It starts `murmur serve` ($MURMUR_BIN, default target/debug/murmur) on
127.0.0.1 with a temporary data dir (scripts/murmur_harness.py), signs up
several tenants (one moved to premium through the operator's set-tier, so
it can run background-music separation and diarization when those models
are in the cache), and has each tenant upload generated audio and submit
jobs on the tiny.en model (with and without VAD), cancel some and delete
some once finished. Meanwhile a killer sends SIGKILL to the server every
few seconds, aimed in turn at an upload in flight (a slowly sent
multipart body), a running transcription and a running separation, and
starts it again on the same data dir and port.

Clients retry the way a careful client must: an upload or a job
submission whose answer was lost is looked for (files by name, jobs by
file) before it is sent again, and each operation records whether its
2xx answer arrived. After the chaos, a bounded wait for the jobs and a
clean restart, it checks:

1. every acknowledged upload is there with its exact size and bytes;
2. every acknowledged job exists (or was deleted by the client and stays
   gone), ended, and its event log is seq 1..N with no gap, no duplicate
   and exactly one terminal event, the last; a cancel acknowledged as
   `cancelled` stays cancelled; the server has no job the client did not
   submit;
3. usage of each tenant equals the decoded duration of its completed jobs
   (deleted ones included: deletion refunds nothing);
4. no half-written state in the data dir: no `.part` upload, no upload
   bytes without a file row, no artifacts folder of a job that is gone;
5. no tenant sees another's files or jobs;
6. the server came back after every kill and never panicked.

Limits: Python 3 standard library only; loopback only; every wait is
bounded (SOAK_SECONDS in total, default 600). Kill moments are random
(SOAK_SEED makes the plan repeatable, not the timing). Models are never
faked: kinds whose model is not installed are skipped with a note. The
RevenueCat webhook is not exercised.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import json
import math
import os
import random
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

# The test tier table with room for a whole soak: files up to 4 MB and a
# storage quota that is never the reason an upload is refused.
SOAK_TIERS = re.sub(r"max_file_bytes = \d+", "max_file_bytes = 4000000", harness.TIERS)
SOAK_TIERS = re.sub(r"storage_bytes = \d+", "storage_bytes = 100000000000", SOAK_TIERS)

TERMINAL = ("completed", "failed", "cancelled")
RATE = 16000


def env_num(name, default, kind=int):
    v = os.environ.get(name)
    return kind(v) if v not in (None, "") else default


def log(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- audio


def wav(samples):
    data = samples.tobytes()
    head = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (
        (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
        + RATE.to_bytes(4, "little") + (RATE * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    ) + b"data" + len(data).to_bytes(4, "little")
    return head + data


def babble(seconds, rng):
    """Speech-like noise: noise shaped by a ~4 Hz syllable envelope with
    pauses, and a wandering pitch under it; different for every seed."""
    n = int(seconds * RATE)
    out = array.array("h", bytes(2 * n))
    phase, pitch = 0.0, rng.uniform(100, 220)
    syl = rng.uniform(3.0, 5.0)
    pauses = [(rng.uniform(0, seconds), rng.uniform(0.2, 0.8)) for _ in range(int(seconds / 3) + 1)]
    for i in range(n):
        t = i / RATE
        if i % 800 == 0:
            pitch = min(260.0, max(90.0, pitch + rng.uniform(-8, 8)))
            quiet = any(s <= t < s + d for s, d in pauses)
        env = 0.0 if quiet else max(0.0, math.sin(math.pi * syl * t)) ** 2
        phase += 2 * math.pi * pitch / RATE
        v = env * (0.25 * math.sin(phase) + 0.12 * math.sin(3 * phase) + 0.1 * rng.uniform(-1, 1))
        out[i] = int(max(-1.0, min(1.0, v)) * 32767)
    return wav(out)


def jfk_bytes(binary):
    p = harness.cache_dir() / "audio" / "jfk.wav"
    if not p.exists():
        try:
            out = subprocess.run([binary, "test-audio", "jfk"], capture_output=True, text=True, timeout=120)
            lines = out.stdout.strip().splitlines()
            p = Path(lines[-1]) if out.returncode == 0 and lines else p
        except (subprocess.TimeoutExpired, OSError):
            pass
    return p.read_bytes() if p.exists() else None


# ---------------------------------------------------------------- records


class Upload:
    def __init__(self, tenant, name, data, seconds, slow):
        self.tenant, self.name, self.size = tenant, name, len(data)
        self.sha = hashlib.sha256(data).hexdigest()
        self.seconds, self.slow = seconds, slow
        self.id = None
        self.ack = None  # "2xx", or "listed" (answer lost, found by name)
        self.attempts = 0
        self.spare = False  # no job reads it


class JobRec:
    def __init__(self, tenant, upload, kind, params, plan):
        self.tenant, self.upload, self.kind, self.params, self.plan = tenant, upload, kind, params, plan
        self.id = None
        self.ack = None  # "2xx" or "listed"
        self.status = "queued"
        self.stage = None
        self.cancel = None  # status in the 202 body of an acknowledged cancel
        self.deleted = None  # "2xx", or "404 after a lost answer"
        self.before_delete = None  # (status, event problems) read just before deleting
        self.separating = kind in ("separate", "asr+sep")


class Soak:
    def __init__(self, args, binary, workdir):
        self.args, self.binary = args, binary
        self.rng = random.Random(args.seed)
        self.srv = harness.Server(binary, workdir, tiers=SOAK_TIERS, prefix="murmur-soak-")
        self.lock = threading.Lock()
        self.halt = threading.Event()  # chaos over
        self.fatal = []  # the soak could not go on
        self.tenants = []
        self.uploads = []
        self.jobs = []
        self.kills = []
        self.inflight_uploads = 0
        self.lost = {"upload": 0, "submit": 0, "cancel": 0, "delete": 0}
        self.recovered = {"upload": 0, "submit": 0}
        self.part_files_seen = 0
        self.notes = []

    # ------------------------------------------------------------ client

    def wait_up(self, limit=120):
        """Until the server answers /healthz (the killer restarts it)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.fatal:
            if self.srv.addr and self.srv.get("/healthz", timeout=3).status == 200:
                return True
            time.sleep(0.3)
        return False

    def read(self, method, path, tenant, **kw):
        """An idempotent request, repeated through restarts until it gets
        an answer that is not a lost connection or a 5xx."""
        for _ in range(30):
            r = self.srv.req(method, path, tenant.token, **kw)
            if r.status and r.status < 500:
                return r
            self.wait_up()
        raise harness.HarnessError(f"{method} {path}: no answer through 30 tries ({r.brief()})")

    def list_all(self, path, tenant):
        items, cursor = [], None
        sep = "&" if "?" in path else "?"
        for _ in range(1000):
            q = f"{path}{sep}limit=200" + (f"&cursor={cursor}" if cursor else "")
            r = self.read("GET", q, tenant)
            if r.status != 200:
                raise harness.HarnessError(f"GET {q} answered {r.brief()}")
            body = r.json()
            items += body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return items
        raise harness.HarnessError(f"{path}: more than 1000 pages")

    def send_upload(self, t, up, data):
        body = b"".join(harness.multipart([("file", up.name, "audio/wav", data)]))
        headers = {"Content-Type": harness.MULTIPART_TYPE, "Content-Length": str(len(body))}
        if not up.slow:
            return self.srv.req("POST", "/v1/files", t.token, headers=headers, body=body, timeout=60)

        def paced():
            # ~640 KB/s: a 1 MB body is in flight for more than a second.
            for i in range(0, len(body), 32768):
                yield body[i : i + 32768]
                time.sleep(0.05)

        with self.lock:
            self.inflight_uploads += 1
        try:
            return self.srv.req("POST", "/v1/files", t.token, headers=headers, body=paced(), timeout=60)
        finally:
            with self.lock:
                self.inflight_uploads -= 1

    def upload(self, t, up, data):
        for _ in range(10):
            up.attempts += 1
            r = self.send_upload(t, up, data)
            if r.status == 201:
                up.id, up.ack = r.json()["id"], "2xx"
                return True
            if r.status and r.status < 500:
                self.notes.append(f"upload {up.name} refused: {r.brief()} {r.body[:200]!r}")
                return False
            # The answer was lost: was it stored anyway?
            self.lost["upload"] += 1
            self.wait_up()
            found = [f for f in self.list_all("/v1/files", t) if f["name"] == up.name]
            if found:
                f = found[0]
                if len(found) > 1:
                    self.notes.append(f"{len(found)} files named {up.name}")
                up.id, up.ack = f["id"], "listed"
                self.recovered["upload"] += 1
                return True
        return False

    def submit(self, t, job):
        for _ in range(10):
            r = self.srv.post("/v1/jobs", {"file_id": job.upload.id, "params": job.params}, t.token)
            if r.status == 202:
                job.id, job.ack = r.json()["id"], "2xx"
                return True
            if r.status and r.status < 500:
                return r
            self.lost["submit"] += 1
            self.wait_up()
            found = [j for j in self.list_all("/v1/jobs", t) if j["file_id"] == job.upload.id]
            if found:
                job.id, job.ack = found[-1]["id"], "listed"
                self.recovered["submit"] += 1
                return True
        return False

    def cancel(self, t, job):
        for _ in range(10):
            r = self.srv.post(f"/v1/jobs/{job.id}/cancel", {}, t.token)
            if r.status == 202:
                job.cancel = (r.json() or {}).get("status")
                return
            if r.status == 409:
                return
            if r.status and r.status < 500:
                self.notes.append(f"cancel {job.id}: {r.brief()}")
                return
            self.lost["cancel"] += 1
            self.wait_up()

    def delete(self, t, job):
        lost = False
        for _ in range(10):
            r = self.srv.delete(f"/v1/jobs/{job.id}", t.token)
            if r.status == 204:
                job.deleted = "2xx"
                return
            if r.status == 404 and lost:
                job.deleted = "404 after a lost answer"
                return
            if r.status and r.status < 500:
                self.notes.append(f"delete {job.id}: {r.brief()}")
                return
            lost = True
            self.lost["delete"] += 1
            self.wait_up()

    def events(self, t, job_id):
        out, after = [], 0
        for _ in range(1000):
            r = self.read("GET", f"/v1/jobs/{job_id}/events?after={after}&limit=1000", t)
            if r.status != 200:
                return None, r.brief()
            items = r.json()["items"]
            if not items:
                return out, None
            out += items
            after = items[-1]["seq"]
        return out, "more than 1000 pages"

    # ------------------------------------------------------------ actors

    def plan_jobs(self, kinds):
        plan = []
        for i in range(self.args.jobs):
            t = self.tenants[i % len(self.tenants)]
            choices = kinds["premium"] if t.premium else kinds["basic"]
            # Diarization is the slowest kind (and the one most kills
            # restart): one premium job in ten at most.
            weights = [1 if k == "asr+diar" else 3 for k in choices]
            kind = self.rng.choices(choices, weights)[0]
            r = self.rng.random()
            fate = "cancel" if r < 0.12 else "delete" if r < 0.30 else "keep"
            audio = self.rng.choice(["jfk", "babble", "babble", "large"]) if self.jfk else self.rng.choice(
                ["babble", "babble", "large"])
            plan.append((t, kind, fate, audio, self.rng.random()))
        return plan

    def params(self, kind):
        p = {"model": harness.MODEL}
        if kind == "asr-novad":
            p["vad"] = {"enabled": False}
        elif kind == "separate":
            p = {"job_type": "bgm_separation"}
        elif kind == "asr+sep":
            p["separate_bgm"] = {"enabled": True}
        elif kind == "asr+diar":
            p["diarize"] = {"enabled": True, "max_speakers": 2}
        return p

    def spare_upload(self, t, rng, stem):
        """A slowly sent upload no job reads (checked like the others)."""
        base = self.spare_audio
        # Unique bytes: the last second of samples is fresh noise.
        data = base[: len(base) - 2 * RATE] + bytes(rng.getrandbits(8) for _ in range(2 * RATE))
        up = Upload(t, f"{stem}-{rng.getrandbits(32):08x}.wav", data, 30.0, slow=True)
        up.spare = True
        with self.lock:
            self.uploads.append(up)
        try:
            self.upload(t, up, data)
        except harness.HarnessError as e:
            self.fatal.append(f"{t.name}: {e}")

    def tenant_worker(self, t, work):
        rng = random.Random(f"{self.args.seed}-{t.name}")
        spares = 0
        for n, (_, kind, fate, audio, x) in enumerate(work):
            if self.halt.is_set() or self.fatal:
                return
            # At most three unfinished jobs each (one more than the basic
            # tier runs at once, so some wait queued and their cancels end
            # them at once); while they run, uploads without a job keep
            # bodies in flight for the killer.
            while not self.halt.is_set():
                with self.lock:
                    open_jobs = [j for j in self.jobs if j.tenant is t and j.id and j.status not in TERMINAL
                                 and not j.deleted]
                if len(open_jobs) < 3:
                    break
                if spares < len(work) and rng.random() < 0.5:
                    spares += 1
                    self.spare_upload(t, rng, f"soak-{t.name}-spare{spares:03d}")
                else:
                    time.sleep(0.3)
            if self.halt.is_set():
                return
            if audio == "jfk":
                data, seconds = self.jfk, 11.0
            elif audio == "large":
                seconds = rng.uniform(15, 25)
                data = babble(seconds, rng)
            else:
                seconds = rng.uniform(3, 10)
                data = babble(seconds, rng)
            up = Upload(t, f"soak-{t.name}-{n:03d}-{rng.getrandbits(32):08x}.wav", data, seconds,
                        slow=audio == "large" or len(data) > 300000)
            with self.lock:
                self.uploads.append(up)
            try:
                if not self.upload(t, up, data):
                    continue
                job = JobRec(t, up, kind, self.params(kind), fate)
                ok = self.submit(t, job)
                if ok is not True:
                    why = ok.brief() if ok else "no answer"
                    self.notes.append(f"{kind} job on {up.name} not submitted: {why}")
                    if ok and ok.status == 422 and kind in ("separate", "asr+sep", "asr+diar"):
                        self.notes.append(f"{kind}: server says the model is not installed; skipped")
                    continue
                with self.lock:
                    self.jobs.append(job)
                if fate == "cancel":
                    # Half at once (often still queued), half a little later.
                    time.sleep(0 if x < 0.5 else x * 1.5)
                    self.cancel(t, job)
            except harness.HarnessError as e:
                self.fatal.append(f"{t.name}: {e}")
                return

    def monitor(self):
        """Follows every tenant's jobs (for the killer's aim and the
        deletes), and deletes finished jobs the plan says to delete."""
        while not self.halt.is_set() and not self.fatal:
            for t in self.tenants:
                try:
                    self.poll(t, chaos=True)
                except harness.HarnessError:
                    pass
            self.halt.wait(0.5)

    def poll(self, t, chaos):
        seen = {}
        cursor = None
        while True:
            q = "/v1/jobs?limit=200" + (f"&cursor={cursor}" if cursor else "")
            r = self.srv.get(q, t.token, timeout=5)
            if r.status != 200:
                if chaos:
                    return
                raise harness.HarnessError(f"GET /v1/jobs answered {r.brief()}")
            body = r.json()
            for j in body["items"]:
                seen[j["id"]] = j
            cursor = body.get("next_cursor")
            if not cursor:
                break
        with self.lock:
            mine = [j for j in self.jobs if j.tenant is t and j.id]
        for job in mine:
            s = seen.get(job.id)
            if s:
                job.status, job.stage = s["status"], s["stage"]
        for job in mine:
            if job.plan == "delete" and job.status in TERMINAL and not job.deleted and job.before_delete is None:
                evs, err = self.events(t, job.id)
                job.before_delete = (job.status, err or event_problems(evs, job.status))
                self.delete(t, job)

    def killer(self):
        targets = ["upload", "transcribe"] + (["separate"] if self.kinds_sep else []) + ["any"]
        i = 0
        while not self.halt.is_set() and len(self.kills) < self.args.max_kills:
            if self.halt.wait(self.rng.uniform(self.args.kill_min, self.args.kill_max)):
                return
            target = targets[i % len(targets)]
            i += 1
            deadline = time.monotonic() + 4
            hit = False
            while time.monotonic() < deadline and not self.halt.is_set():
                hit = self.in_flight(target)
                if hit:
                    break
                time.sleep(0.05)
            if self.halt.is_set():
                return
            snapshot = self.describe_in_flight()
            t0 = time.monotonic()
            self.srv.kill()
            self.part_files_seen += len(list((self.srv.dir / "data" / "files").glob("*/.*.part")))
            try:
                self.srv.restart()
            except harness.HarnessError as e:
                self.fatal.append(f"the server did not come back after kill {len(self.kills) + 1}: {e}")
                self.halt.set()
                return
            back = time.monotonic() - t0
            self.kills.append((target, hit, snapshot, back))
            log(f"kill {len(self.kills)} at {time.monotonic() - self.t0:.0f} s, aimed at {target} "
                f"({'hit' if hit else 'missed'}; {snapshot}); back in {back:.1f} s")

    def in_flight(self, target):
        with self.lock:
            running = [j for j in self.jobs if j.status == "running" and not j.deleted]
            if target == "upload":
                return self.inflight_uploads > 0
            if target == "transcribe":
                return any(j.stage == "transcribe" for j in running)
            if target == "separate":
                return any(j.separating and j.stage in ("decode", "separate") for j in running)
            return True

    def describe_in_flight(self):
        with self.lock:
            running = [f"{j.kind}/{j.stage}" for j in self.jobs if j.status == "running" and not j.deleted]
            return f"{self.inflight_uploads} slow uploads in flight, running: {', '.join(running) or 'none'}"

    # ------------------------------------------------------------ the run

    def run(self):
        self.t0 = time.monotonic()
        a = self.args
        self.srv.start()
        log(f"server on {self.srv.addr[0]}:{self.srv.addr[1]}, data dir {self.srv.dir / 'data'}")
        for i in range(a.tenants):
            t = self.srv.signup(f"Soak{i}")
            t.premium = i == 0
            if t.premium:
                self.srv.set_tier(t.id, "premium")
            self.tenants.append(t)
        if not self.srv.model_installed(self.tenants[0].token):
            raise harness.HarnessError(f"{harness.MODEL} is not installed in {harness.cache_dir() / 'models'}")
        models = harness.cache_dir() / "models"
        basic = ["asr", "asr", "asr-novad"]
        premium = list(basic)
        self.kinds_sep = (models / "spleeter-2stems" / "murmur-model.json").exists()
        if self.kinds_sep:
            premium += ["separate", "asr+sep"]
        else:
            self.notes.append("spleeter-2stems is not installed: no separation jobs")
        if (models / "diarization" / "murmur-model.json").exists():
            premium += ["asr+diar"]
        else:
            self.notes.append("the diarization models are not installed: no diarization jobs")
        self.spare_audio = babble(30.0, random.Random(self.args.seed))
        self.jfk = jfk_bytes(self.binary)
        if self.jfk is None:
            self.notes.append("no jfk.wav in the cache: generated speech-like noise only")
        plan = self.plan_jobs({"basic": basic, "premium": premium})
        chaos_end = self.t0 + a.seconds * 0.7
        threads = [threading.Thread(target=self.tenant_worker, args=(t, [p for p in plan if p[0] is t]),
                                    daemon=True) for t in self.tenants]
        helpers = [threading.Thread(target=self.monitor, daemon=True),
                   threading.Thread(target=self.killer, daemon=True)]
        for th in threads + helpers:
            th.start()
        # Chaos until every job is submitted and ended, or time is up.
        while time.monotonic() < chaos_end and not self.fatal:
            with self.lock:
                done = not any(th.is_alive() for th in threads) and all(
                    j.status in TERMINAL or j.deleted for j in self.jobs)
            if done:
                break
            time.sleep(0.5)
        self.halt.set()
        for th in helpers:
            th.join(timeout=120)
        for th in threads:
            th.join(timeout=90)
        self.chaos_seconds = time.monotonic() - self.t0
        if self.fatal:
            return
        # No more kills: let the rest finish (bounded), then a clean restart.
        drain_end = self.t0 + a.seconds * 0.92
        self.wait_up()
        while time.monotonic() < drain_end:
            for t in self.tenants:
                self.poll(t, chaos=False)
            with self.lock:
                if all(j.status in TERMINAL or j.deleted for j in self.jobs):
                    break
            time.sleep(1.0)
        self.clean_stop = self.srv.stop(timeout=30)
        self.srv.restart()

    # ------------------------------------------------------------ verdicts

    def verify(self):
        rows = []

        def row(name, expected, got, ok):
            rows.append((name, expected, got, ok))

        listed_files, listed_jobs = {}, {}
        for t in self.tenants:
            listed_files[t.id] = {f["id"]: f for f in self.list_all("/v1/files", t)}
            listed_jobs[t.id] = {j["id"]: j for j in self.list_all("/v1/jobs", t)}

        self.attempts = [j["attempts"] for js in listed_jobs.values() for j in js.values()]

        # 1. uploads
        acked = [u for u in self.uploads if u.ack]
        bad = []
        for u in acked:
            f = listed_files[u.tenant.id].get(u.id)
            if not f:
                bad.append(f"{u.id} ({u.ack}) missing")
                continue
            if f["size"] != u.size:
                bad.append(f"{u.id} size {f['size']} != {u.size}")
            r = self.read("GET", f"/v1/files/{u.id}/content", u.tenant, timeout=60)
            if r.status != 200 or hashlib.sha256(r.body).hexdigest() != u.sha:
                bad.append(f"{u.id} bytes differ ({r.brief()}, {len(r.body)} bytes)")
        direct = sum(u.ack == "2xx" for u in acked)
        row("1. acknowledged uploads present, exact size and sha256",
            f"{len(acked)} of {len(acked)} ({direct} by 2xx, {len(acked) - direct} found by name after a lost answer)",
            f"{len(acked) - len(bad)} intact" + (": " + "; ".join(bad[:5]) if bad else ""), not bad)
        known_files = {u.id for u in acked}
        extra = [fid for tid, fs in listed_files.items() for fid in fs if fid not in known_files]
        row("1b. no file the clients did not upload (no duplicate from a retry)", "0",
            str(len(extra)) + (f": {extra[:5]}" if extra else ""), not extra)

        # 2. jobs
        acked_jobs = [j for j in self.jobs if j.ack]
        missing, unfinished, log_bad, cancel_bad, undeleted, pre_bad = [], [], [], [], [], []
        by_status = {}
        for j in acked_jobs:
            if j.deleted:
                r = self.read("GET", f"/v1/jobs/{j.id}", j.tenant)
                if r.status != 404:
                    undeleted.append(f"{j.id} answers {r.brief()}")
                status, problems = j.before_delete
                by_status[status] = by_status.get(status, 0) + 1
                if problems:
                    pre_bad.append(f"{j.id}: {problems}")
                continue
            s = listed_jobs[j.tenant.id].get(j.id)
            if not s:
                missing.append(f"{j.id} ({j.ack}, plan {j.plan}, deleted {j.deleted})")
                continue
            j.status = s["status"]
            by_status[j.status] = by_status.get(j.status, 0) + 1
            if j.status not in TERMINAL:
                unfinished.append(f"{j.id} {j.status}/{s['stage']} attempts {s['attempts']}")
                continue
            evs, err = self.events(j.tenant, j.id)
            problems = err or event_problems(evs, j.status)
            if problems:
                log_bad.append(f"{j.id} ({j.kind}): {problems}")
            if j.cancel == "cancelled" and j.status != "cancelled":
                cancel_bad.append(f"{j.id} was cancelled (202, status cancelled) but ended {j.status}")
        deleted = [j for j in acked_jobs if j.deleted]
        row("2a. acknowledged jobs exist (deleted ones stay gone)",
            f"{len(acked_jobs) - len(deleted)} present, {len(deleted)} deleted -> 404",
            f"{len(acked_jobs) - len(deleted) - len(missing)} present, {len(deleted) - len(undeleted)} gone"
            + (": " + "; ".join((missing + undeleted)[:5]) if missing or undeleted else ""),
            not missing and not undeleted)
        row("2b. every job reached a terminal state", "all terminal",
            ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()))
            + (": " + "; ".join(unfinished[:5]) if unfinished else ""), not unfinished)
        row("2c. event log seq 1..N, no gap/duplicate, one terminal event, last",
            f"{len(acked_jobs)} logs clean (deleted jobs read before deletion)",
            f"{len(acked_jobs) - len(log_bad) - len(pre_bad) - len(missing) - len(unfinished)} clean"
            + (": " + "; ".join((log_bad + pre_bad)[:5]) if log_bad or pre_bad else ""),
            not log_bad and not pre_bad)
        n_cancel = sum(j.cancel == "cancelled" for j in acked_jobs)
        n_flag = sum(j.cancel not in (None, "cancelled") for j in acked_jobs)
        row("2d. a cancel acknowledged as cancelled stays cancelled",
            f"{n_cancel} cancelled ({n_flag} more running when cancelled: any end)",
            f"{n_cancel - len(cancel_bad)} cancelled"
            + (": " + "; ".join(cancel_bad[:5]) if cancel_bad else ""), not cancel_bad)
        known_jobs = {j.id for j in acked_jobs}
        extra_jobs = [jid for tid, js in listed_jobs.items() for jid in js if jid not in known_jobs]
        row("2e. no job the clients did not submit (no duplicate from a retry)", "0",
            str(len(extra_jobs)) + (f": {extra_jobs[:5]}" if extra_jobs else ""), not extra_jobs)

        # 3. usage
        periods = {time.strftime("%Y-%m", time.gmtime(x)) for x in (self.wall0, time.time())}
        usage_bad, usage_txt = [], []
        for t in self.tenants:
            want_s, want_n = 0.0, 0
            for j in acked_jobs:
                if j.tenant is not t:
                    continue
                status = j.before_delete[0] if j.deleted else j.status
                if status == "completed":
                    f = listed_files[t.id].get(j.upload.id) or {}
                    want_s += f.get("duration_s") or 0.0
                    want_n += 1
            got_s, got_n = 0.0, 0
            for p in sorted(periods):
                u = self.read("GET", f"/v1/usage?period={p}", t).json() or {}
                got_s += u.get("audio_seconds", 0.0)
                got_n += u.get("jobs", 0)
            ok = abs(got_s - want_s) < 1e-6 and got_n == want_n
            usage_txt.append((t.name, f"{want_s:.2f} s/{want_n} jobs", f"{got_s:.2f} s/{got_n} jobs"))
            if not ok:
                usage_bad.append(t.name)
        row("3. usage = decoded seconds of completed jobs (deleted included)",
            ", ".join(f"{n} {w}" for n, w, _ in usage_txt), ", ".join(f"{n} {g}" for n, _, g in usage_txt),
            not usage_bad)

        # 4. data dir
        data = self.srv.dir / "data"
        parts = [str(p.relative_to(data)) for p in (data / "files").glob("*/.*")]
        orphans = []
        for d in (data / "files").iterdir() if (data / "files").exists() else []:
            rows_of = next((listed_files[t.id] for t in self.tenants if t.id == d.name), None)
            for f in d.iterdir():
                if f.name.startswith("."):
                    continue
                if rows_of is None or f.name not in rows_of:
                    orphans.append(str(f.relative_to(data)))
        stray = []
        art = data / "artifacts"
        for d in art.iterdir() if art.exists() else []:
            jobs_of = next((listed_jobs[t.id] for t in self.tenants if t.id == d.name), None)
            for jd in d.iterdir():
                if jobs_of is None or jd.name not in jobs_of:
                    stray.append(str(jd.relative_to(data)))
        row("4a. no .part or hidden file under files/", "0",
            f"{len(parts)} (kills left {self.part_files_seen} .part files, swept at the next start)"
            + (f": {parts[:5]}" if parts else ""), not parts)
        row("4b. no upload bytes without a file row", "0", str(len(orphans)) + (f": {orphans[:5]}" if orphans else ""),
            not orphans)
        row("4c. no artifacts folder of a job that does not exist", "0",
            str(len(stray)) + (f": {stray[:5]}" if stray else ""), not stray)

        # 5. tenants apart
        leak = []
        for t in self.tenants:
            mine_f = {u.id for u in acked if u.tenant is t}
            mine_j = {j.id for j in acked_jobs if j.tenant is t}
            leak += [f"{t.name} lists file {f}" for f in listed_files[t.id] if f not in mine_f]
            leak += [f"{t.name} lists job {j}" for j in listed_jobs[t.id] if j not in mine_j]
            others = [x for x in self.tenants if x is not t]
            for o in others:
                for fid in list(listed_files[o.id])[:3]:
                    if self.read("GET", f"/v1/files/{fid}", t).status != 404:
                        leak.append(f"{t.name} reads {o.name}'s file {fid}")
                for jid in list(listed_jobs[o.id])[:3]:
                    if self.read("GET", f"/v1/jobs/{jid}/events", t).status != 404:
                        leak.append(f"{t.name} reads {o.name}'s job {jid}")
        row("5. each tenant lists and reads only its own files and jobs", "0 leaks",
            str(len(leak)) + (": " + "; ".join(leak[:5]) if leak else ""), not leak)

        # 6. the server itself
        log_text = (self.srv.dir / "stderr.log").read_text(errors="replace")
        panics = [l for l in log_text.splitlines() if "panicked" in l]
        row("6. restarted after every kill; no panic in its log",
            f"{len(self.kills)} restarts, 0 panics",
            f"{self.srv.starts - 2} restarts after kills, {len(panics)} panics"
            + (f": {panics[0][:200]}" if panics else ""),
            self.srv.starts - 2 == len(self.kills) and not panics)
        return rows


def event_problems(evs, status):
    """What is wrong with a finished job's event log, or None."""
    if not evs:
        return "no events"
    seqs = [e["seq"] for e in evs]
    if seqs != list(range(1, len(seqs) + 1)):
        dup = len(seqs) - len(set(seqs))
        return f"seqs {seqs[:3]}..{seqs[-3:]} not 1..{len(seqs)} ({dup} duplicates)"
    kinds = [e["type"] for e in evs]
    if kinds[0] != "queued":
        return f"first event is {kinds[0]}"
    terminal = [i for i, k in enumerate(kinds) if k in TERMINAL]
    if len(terminal) != 1:
        return f"{len(terminal)} terminal events: {' '.join(kinds)}"
    if terminal[0] != len(kinds) - 1:
        return f"terminal event {kinds[terminal[0]]} is not the last: {' '.join(kinds)}"
    if kinds[-1] != status:
        return f"last event {kinds[-1]} but the job is {status}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=env_num("SOAK_JOBS", 120))
    ap.add_argument("--seconds", type=int, default=env_num("SOAK_SECONDS", 600), help="bound on the whole run")
    ap.add_argument("--tenants", type=int, default=env_num("SOAK_TENANTS", 4))
    ap.add_argument("--kill-min", type=float, default=env_num("SOAK_KILL_MIN", 2.0, float))
    ap.add_argument("--kill-max", type=float, default=env_num("SOAK_KILL_MAX", 8.0, float))
    ap.add_argument("--max-kills", type=int, default=env_num("SOAK_MAX_KILLS", 100))
    ap.add_argument("--seed", type=int, default=env_num("SOAK_SEED", random.randrange(1 << 30)))
    ap.add_argument("--keep", action="store_true", help="keep the data dir and server log")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    binary = os.environ.get("MURMUR_BIN", "target/debug/murmur")
    if not os.access(binary, os.X_OK):
        sys.exit(f"soak: no murmur binary at {binary} (build it, or set MURMUR_BIN)")
    work = tempfile.mkdtemp(prefix="murmur-soak-")
    soak = Soak(args, binary, work)
    soak.wall0 = time.time()
    log(f"seed {args.seed}, {args.jobs} jobs, {args.tenants} tenants, kills every "
        f"{args.kill_min:g}-{args.kill_max:g} s (at most {args.max_kills}), {args.seconds} s bound")
    rows = []
    try:
        soak.run()
        if not soak.fatal:
            rows = soak.verify()
    except harness.HarnessError as e:
        soak.fatal.append(str(e))
    finally:
        soak.srv.stop()
        elapsed = time.monotonic() - soak.t0 if hasattr(soak, "t0") else 0
        if args.keep or soak.fatal or any(not ok for *_, ok in rows):
            log(f"kept {soak.srv.dir} (data dir and stderr.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    header = ["invariant", "expected", "got", "verdict"]
    lines = [[n, e, g, "ok" if ok else "VIOLATED"] for n, e, g, ok in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|---|---|---|")
        for l in lines:
            print("| " + " | ".join(c.replace("|", "/") for c in l) + " |")
    else:
        for l in lines:
            print(f"{l[3]:8}  {l[0]}\n          expected: {l[1]}\n          got:      {l[2]}")
    hits = sum(1 for k in soak.kills if k[1])
    by_target = {}
    for target, hit, _, _ in soak.kills:
        h, n = by_target.get(target, (0, 0))
        by_target[target] = (h + hit, n + 1)
    backs = [k[3] for k in soak.kills]
    kinds = {}
    for j in soak.jobs:
        kinds[j.kind] = kinds.get(j.kind, 0) + 1
    fates = {}
    for j in soak.jobs:
        fates[j.plan] = fates.get(j.plan, 0) + 1
    print()
    print(f"kills: {len(soak.kills)} ({hits} landed on their target: "
          + ", ".join(f"{t} {h}/{n}" for t, (h, n) in by_target.items()) + ")"
          + (f"; restart took avg {sum(backs) / len(backs):.1f} s, max {max(backs):.1f} s" if backs else ""))
    print(f"uploads: {len(soak.uploads)} ({sum(u.spare for u in soak.uploads)} without a job, "
          f"{sum(1 for u in soak.uploads if u.slow)} sent slowly), "
          f"{soak.recovered['upload']} found by name after a lost answer; jobs: {len(soak.jobs)} "
          f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}; "
          f"{', '.join(f'{v} {k}' for k, v in sorted(fates.items()))}), "
          f"{soak.recovered['submit']} found by file after a lost answer")
    print(f"lost answers: " + ", ".join(f"{v} {k}" for k, v in soak.lost.items()))
    att = getattr(soak, "attempts", [])
    if att:
        print(f"jobs started more than once (resumed after a kill): {sum(a > 1 for a in att)} of {len(att)} "
              f"kept, most starts of one job {max(att)}")
    if len(soak.jobs) < args.jobs:
        print(f"note: only {len(soak.jobs)} of {args.jobs} jobs were submitted before the time bound")
    chaos = getattr(soak, "chaos_seconds", 0)
    print(f"time: {elapsed:.0f} s ({chaos:.0f} s under kills); seed {args.seed}; binary {binary}"
          + ("" if getattr(soak, "clean_stop", True) else "; the final SIGTERM needed a SIGKILL"))
    for n in dict.fromkeys(soak.notes):
        print(f"note: {n}")
    for f in soak.fatal:
        print(f"SOAK FAILED: {f}")
    if soak.fatal or not rows:
        return 2
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
