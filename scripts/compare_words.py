"""Word timings of Murmur against faster-whisper's word_timestamps=True.

Used by scripts/compare-words (read it first). Commands:
  fw MODEL_DIR AUDIO COMPUTE_TYPE OUT.json   faster-whisper's words (greedy,
                                             no VAD, as Murmur decodes)
  compare MURMUR.json FW.json LABEL          prints the figures for one pair
"""

import difflib
import json
import re
import statistics
import sys


def cmd_fw(model_dir, audio, compute_type, out):
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=2)
    segments, _ = model.transcribe(
        audio,
        beam_size=1,
        best_of=1,
        vad_filter=False,
        condition_on_previous_text=True,
        word_timestamps=True,
    )
    words = [
        {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
        for s in segments
        for w in s.words
    ]
    with open(out, "w") as f:
        json.dump({"words": words}, f)


def norm(word):
    return re.sub(r"[^\w']", "", word.lower())


def cmd_compare(murmur_path, fw_path, label):
    with open(murmur_path) as f:
        murmur = [w for s in json.load(f)["segments"] for w in s.get("words") or []]
    with open(fw_path) as f:
        fw = json.load(f)["words"]
    a = [norm(w["word"]) for w in murmur]
    b = [norm(w["word"]) for w in fw]
    pairs = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            pairs.append((murmur[block.a + k], fw[block.b + k]))
    if not pairs:
        print(f"{label:<28} no words in common (murmur {len(a)}, faster-whisper {len(b)})")
        return
    ds = [abs(m["start"] - f["start"]) for m, f in pairs]
    de = [abs(m["end"] - f["end"]) for m, f in pairs]
    within = sum(1 for s, e in zip(ds, de) if s <= 0.05 and e <= 0.05)
    print(
        f"{label:<28} words {len(a):>3}/{len(b):<3} matched {len(pairs):>3}  "
        f"median |start| {statistics.median(ds) * 1000:5.0f} ms  "
        f"median |end| {statistics.median(de) * 1000:5.0f} ms  "
        f"max {max(ds + de) * 1000:5.0f} ms  both within 50 ms: {within}/{len(pairs)}"
    )


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "fw":
        cmd_fw(*args)
    elif cmd == "compare":
        cmd_compare(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
