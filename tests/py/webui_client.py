#!/usr/bin/env python3
"""A Whisper-WebUI backend client against Murmur: httpx (what that
backend's own tests drive it with, through FastAPI's TestClient) sending
its pydantic models' `model_dump()`s as query parameters exactly as httpx
encodes them (True as `true`, `float("inf")` as `inf`, the list
`suppress_tokens=[-1]` as `-1`, None as an empty value), a multipart part
named `file`, then `wait_for_task_completion`'s polling of
`/task/{identifier}` and `fetch_file_response`'s `/task/file/{identifier}`.
The only change to that backend's client code is the Authorization header.

The dictionaries below are written out from that backend's
`modules/whisper/data_classes.py` defaults (its package needs gradio and
torch, which this suite does not install).

Run by scripts/test (httpx pinned in a virtual environment); alone:
MURMUR_BIN=target/debug/murmur python3 tests/py/webui_client.py
"""

import io
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import wave
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import httpx  # noqa: E402
import murmur_harness as h  # noqa: E402

BIN = os.environ.get("MURMUR_BIN", str(REPO / "target" / "debug" / "murmur"))
TEST_ANSWER = "And so my fellow Americans ask not what your country can do for you ask what you can do for your country"

# WhisperParams(model_size=..., compute_type="float32").model_dump(exclude_none=True)
WHISPER = {
    "model_size": "tiny.en", "is_translate": False, "beam_size": 5,
    "log_prob_threshold": -1.0, "no_speech_threshold": 0.6, "compute_type": "float32",
    "best_of": 5, "patience": 1.0, "condition_on_previous_text": True,
    "prompt_reset_on_temperature": 0.5, "temperature": 0.0,
    "compression_ratio_threshold": 2.4, "length_penalty": 1.0, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "suppress_blank": True, "suppress_tokens": [-1],
    "max_initial_timestamp": 1.0, "word_timestamps": False,
    "prepend_punctuations": "\"'“¿([{-", "append_punctuations": "\"'.。,，!！?？:：”)]}、",
    "chunk_length": 30, "language_detection_threshold": 0.5,
    "language_detection_segments": 1, "batch_size": 24, "enable_offload": True,
}
# VadParams().model_dump()  (TEST_VAD_PARAMS)
VAD = {
    "vad_filter": False, "threshold": 0.5, "min_speech_duration_ms": 250,
    "max_speech_duration_s": float("inf"), "min_silence_duration_ms": 2000,
    "speech_pad_ms": 400,
}
# BGMSeparationParams().model_dump()  (TEST_BGM_SEPARATION_PARAMS)
BGM = {
    "is_separate_bgm": False, "uvr_model_size": "UVR-MDX-NET-Inst_HQ_4",
    "uvr_device": "cuda", "segment_size": 256, "save_file": False, "enable_offload": True,
}
# DiarizationParams().model_dump()
DIARIZATION = {"is_diarize": False, "diarization_device": "cuda", "hf_token": "", "enable_offload": True}
TEST_PIPELINE_PARAMS = {**WHISPER, **VAD, **BGM, **DIARIZATION}


def murmur(*args):
    env = dict(os.environ, MURMUR__MODELS__DIR=str(h.cache_dir() / "models"))
    return subprocess.run([BIN, *args], env=env, check=True, capture_output=True, text=True).stdout


def words(text):
    return re.findall(r"[a-z']+", text.lower())


class WebuiClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        murmur("models", "fetch", "tiny.en", "silero-vad", "spleeter-2stems")
        cls.jfk = Path(murmur("test-audio", "jfk").strip()).read_bytes()
        cls.music = Path(murmur("test-audio", "music").strip()).read_bytes()
        cls.work = tempfile.TemporaryDirectory(prefix="murmur-py-webui-")
        cls.server = h.Server(BIN, cls.work.name, prefix="murmur-py-webui-").start()
        cls.tenant = cls.server.signup("PyWebui")
        cls.server.set_tier(cls.tenant.id, "premium")
        r = cls.server.post("/v1/api-keys", {"name": "whisper-webui client"}, cls.tenant.token)
        assert r.status == 201, r.brief()
        host, port = cls.server.addr
        cls.base = f"http://{host}:{port}"
        cls.client = httpx.Client(
            base_url=cls.base, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=60
        )

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        cls.work.cleanup()

    # That backend's test_task_status.py helpers.
    def wait_for_task_completion(self, identifier, max_attempts=600, frequency=0.5):
        for _ in range(max_attempts):
            task = self.client.get(f"/task/{identifier}")
            self.assertEqual(task.status_code, 200, task.text)
            status = task.json()["status"]
            if status == "completed":
                return task
            if status == "failed":
                raise Exception("Task polling failed")
            time.sleep(frequency)
        return None

    def post(self, path, name, content, params):
        return self.client.post(
            path, files={"file": (name, io.BytesIO(content), "audio/mpeg")}, params=params
        )

    def test_transcription_endpoint(self):
        response = self.post("/transcription", "jfk.wav", self.jfk, TEST_PIPELINE_PARAMS)
        self.assertEqual(response.status_code, 201, response.text)
        self.assertEqual(response.json()["status"], "queued")
        self.assertEqual(response.json()["message"], "Transcription task has queued")
        identifier = response.json()["identifier"]
        completed = self.wait_for_task_completion(identifier)
        self.assertIsNotNone(completed)
        result = completed.json()["result"]
        self.assertTrue(result, "Transcription text is empty")
        text = " ".join(seg["text"] for seg in result)
        self.assertEqual(words(text), words(TEST_ANSWER))

    def test_word_timestamps(self):
        response = self.post("/transcription", "jfk.wav", self.jfk, {**TEST_PIPELINE_PARAMS, "word_timestamps": True})
        self.assertEqual(response.status_code, 201, response.text)
        completed = self.wait_for_task_completion(response.json()["identifier"])
        segments = completed.json()["result"]
        last_end = 0.0
        for segment in segments:
            self.assertTrue(segment["words"], segment)
            self.assertEqual("".join(w["word"] for w in segment["words"]).strip(), segment["text"].strip())
            for w in segment["words"]:
                self.assertLessEqual(w["start"], w["end"])
                self.assertGreaterEqual(w["start"], last_end - 1e-9)
                self.assertTrue(0.0 <= w["probability"] <= 1.0)
                last_end = w["end"]
        self.assertGreater(last_end, 10.0)

    def test_vad_endpoint(self):
        response = self.post("/vad", "jfk.wav", self.jfk, VAD)
        self.assertEqual(response.status_code, 201, response.text)
        completed = self.wait_for_task_completion(response.json()["identifier"])
        result = completed.json()["result"]
        self.assertTrue(result and "start" in result[0] and "end" in result[0])

    def test_bgm_separation_endpoint(self):
        response = self.post("/bgm-separation", "music.mp3", self.music, BGM)
        self.assertEqual(response.status_code, 201, response.text)
        identifier = response.json()["identifier"]
        completed = self.wait_for_task_completion(identifier)
        result = completed.json()["result"]
        self.assertTrue(result["instrumental_hash"] and result["vocal_hash"])
        file_response = self.client.get(f"/task/file/{identifier}")
        self.assertEqual(file_response.status_code, 200)
        with zipfile.ZipFile(io.BytesIO(file_response.content)) as archive:
            self.assertIsNone(archive.testzip())  # every CRC-32 checks out
            names = archive.namelist()
            self.assertEqual(names, [result["instrumental_hash"] + ".wav", result["vocal_hash"] + ".wav"])
            for name in names:
                with wave.open(io.BytesIO(archive.read(name))) as w:
                    self.assertEqual((w.getnchannels(), w.getframerate()), (2, 44100))
                    self.assertGreater(w.getnframes(), 44100)

    def test_refusals_and_another_tenant(self):
        refused = self.post("/transcription", "jfk.wav", self.jfk, {**TEST_PIPELINE_PARAMS, "hotwords": "Americans"})
        self.assertEqual(refused.status_code, 422)
        self.assertIn("hotwords", refused.json()["detail"])
        missing = self.client.get("/task/j_never_was")
        self.assertEqual((missing.status_code, missing.json()["detail"]), (404, "Identifier not found"))
        mine = self.post("/vad", "jfk.wav", self.jfk, VAD).json()["identifier"]
        other = self.server.signup("PyWebuiOther")
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {other.token}"}) as theirs:
            for path in (f"/task/{mine}", f"/task/file/{mine}"):
                answer = theirs.get(path)
                self.assertEqual((answer.status_code, answer.json()["detail"]), (404, "Identifier not found"))
        self.wait_for_task_completion(mine)


if __name__ == "__main__":
    unittest.main(verbosity=2)
