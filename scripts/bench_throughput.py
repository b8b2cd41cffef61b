#!/usr/bin/env python3
"""Throughput of one loaded model under concurrent jobs: Murmur's inference
pool against faster-whisper's `num_workers`, side by side in one run.

For each N in --workers (default 1 2 4), --runs times, alternating engines:
  murmur  `murmur serve` (release build) with `models.workers = N` on a
          loopback port; an enterprise tenant uploads the 30 s two-speaker
          call once, one warm-up job loads the model, then --jobs jobs
          (default 4) are submitted at once over HTTP and polled until each
          has completed; the result texts are checked against the call's
          reference.
  fw      faster-whisper 1.2.1 on the same CTranslate2 weights,
          `WhisperModel(num_workers=N, cpu_threads=2, compute_type="int8")`,
          one warm-up transcription, then --jobs transcriptions from N
          threads at once (a server handling N requests at a time).
Both decode greedily (beam 1, best_of 1) with the temperature fallback and
without VAD, int8. Measured: wall time from the first submission to the
last completion (model loading excluded on both sides), audio seconds per
wall second, the median time one job took from submission, and the WER of
every transcript. Ratios are Murmur / faster-whisper per N.

Needs what scripts/bench-asr sets up (venv, CTranslate2 dirs, audio) and a
release build. Usage:
  scripts/bench-throughput [--model base] [--workers "1 2 4"] [--jobs 4] [--runs 3]
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
import bench_asr  # noqa: E402
import murmur_harness as harness  # noqa: E402

FW_SCRIPT = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from faster_whisper import WhisperModel
model_dir, audio, workers, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=2, num_workers=workers)
def one(_):
    t = time.perf_counter()
    segs, _ = m.transcribe(audio, beam_size=1, best_of=1, vad_filter=False, condition_on_previous_text=True)
    text = " ".join(s.text.strip() for s in segs)
    return text, time.perf_counter() - t
one(0)
t0 = time.perf_counter()
with ThreadPoolExecutor(workers) as pool:
    done = list(pool.map(one, range(jobs)))
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "latencies": [d[1] for d in done], "texts": [d[0] for d in done]}))
"""


def run_fw(py, ct2, audio, workers, jobs):
    out = subprocess.run(
        [py, "-c", FW_SCRIPT, str(ct2), str(audio), str(workers), str(jobs)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_murmur(binary, workdir, model, audio, workers, jobs):
    srv = harness.Server(binary, workdir, audio_limits=False, prefix="murmur-throughput-",
                         model=model, models={"workers": workers, "compute_type": "int8"})
    srv.start()
    try:
        t = srv.signup("Bench")
        srv.set_tier(t.id, "enterprise")
        t = harness.Tenant(t.name, t.id, t.user_id, t.email, srv.login(t.email).json()["token"])
        up = srv.upload_file(t.token, "call.wav", Path(audio).read_bytes())
        if up.status not in (200, 201):
            raise SystemExit(f"upload answered {up.brief()}")
        file_id = up.json()["id"]
        params = {"model": model, "vad": {"enabled": False}, "beam_size": 1, "best_of": 1,
                  "repetition_guard": False}

        def submit():
            r = srv.post("/v1/jobs", {"file_id": file_id, "params": params}, t.token)
            if r.status not in (200, 201, 202):
                raise SystemExit(f"job submission answered {r.brief()}")
            return r.json()["id"]

        def wait(ids, started):
            ended, texts = {}, {}
            while len(ended) < len(ids):
                for jid in ids:
                    if jid in ended:
                        continue
                    st = (srv.get(f"/v1/jobs/{jid}", t.token).json() or {}).get("status")
                    if st == "completed":
                        ended[jid] = time.perf_counter() - started
                        texts[jid] = srv.get(f"/v1/jobs/{jid}/result?format=text", t.token).body.decode()
                    elif st in ("failed", "cancelled"):
                        raise SystemExit(f"job {jid} ended {st}")
                time.sleep(0.05)
            return ended, texts

        wait([submit()], time.perf_counter())  # loads the model
        t0 = time.perf_counter()
        ids = [submit() for _ in range(jobs)]
        ended, texts = wait(ids, t0)
        wall = max(ended.values())
        return {"wall": wall, "latencies": list(ended.values()), "texts": list(texts.values())}
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--workers", default="1 2 4")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", required=True)
    a = ap.parse_args()

    cache = harness.cache_dir()
    audio = cache / "audio" / "pyannote-sample.wav"
    ref = bench_asr.stm_text(str(cache / "audio" / "pyannote-sample.stm"))
    dur = bench_asr.wav_seconds(str(audio))
    py = cache / "bench-venv" / "bin" / "python"
    ct2 = cache / "bench-ct2" / a.model
    for need in (audio, py, ct2):
        if not need.exists():
            raise SystemExit(f"{need} is missing: run scripts/bench-asr once first")
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))

    print(f"bench-throughput {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}: {a.model}, "
          f"{a.jobs} jobs of the {dur:.0f} s call at once, {os.cpu_count()} CPUs, runs {a.runs}, "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {}
    for run in range(1, a.runs + 1):
        for n in [int(x) for x in a.workers.split()]:
            for engine in ("murmur", "fw"):
                print(f"  run {run}: {engine} N={n}", file=sys.stderr, flush=True)
                if engine == "murmur":
                    r = run_murmur(a.binary, workdir, a.model, audio, n, a.jobs)
                else:
                    r = run_fw(str(py), ct2, audio, n, a.jobs)
                r["wer"] = max(bench_asr.wer(ref, text) for text in r["texts"])
                results.setdefault((n, engine), []).append(r)

    med = statistics.median
    print()
    print(f"{'N':>2} {'engine':<7} {'wall s':>7} {'audio s/s':>9} {'job s (median)':>15} {'worst WER %':>11}")
    for (n, engine), rs in sorted(results.items()):
        wall = med(r["wall"] for r in rs)
        lat = med(med(r["latencies"]) for r in rs)
        worst = max(r["wer"] for r in rs)
        print(f"{n:>2} {engine:<7} {wall:>7.2f} {a.jobs * dur / wall:>9.2f} {lat:>15.2f} {100 * worst:>11.1f}")
    print()
    print("Murmur / faster-whisper (below 1.0 = Murmur faster), per N, medians:")
    for n in sorted({n for n, _ in results}):
        m = med(r["wall"] for r in results[(n, "murmur")])
        f = med(r["wall"] for r in results[(n, "fw")])
        pairs = [mr["wall"] / fr["wall"] for mr, fr in zip(results[(n, "murmur")], results[(n, "fw")])]
        print(f"  N={n}: wall {m / f:.2f} (pair by pair {', '.join(f'{p:.2f}' for p in pairs)})")
    one = {e: med(r["wall"] for r in results[(1, e)]) for e in ("murmur", "fw") if (1, e) in results}
    if one:
        print("Scaling against N=1 (wall of N=1 / wall of N; 1.0 = no gain):")
        for n in sorted({n for n, _ in results}):
            print("  N=%d: %s" % (n, ", ".join(
                f"{e} {one[e] / med(r['wall'] for r in results[(n, e)]):.2f}" for e in one)))


if __name__ == "__main__":
    main()
