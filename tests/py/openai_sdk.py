#!/usr/bin/env python3
"""The official OpenAI Python SDK (`openai`, the version pinned in
scripts/test) against Murmur's OpenAI-compatible endpoints, unchanged, on
the real binary over loopback: listing and retrieving models,
transcriptions as json, verbose_json and text, word timestamps
(`timestamp_granularities=["word"]`), a streamed transcription,
errors raised as the SDK's exception classes, and another tenant seeing
none of it.

Run by scripts/test (which installs the SDK in a virtual environment);
alone: MURMUR_BIN=target/debug/murmur python3 tests/py/openai_sdk.py
"""

import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import murmur_harness as h  # noqa: E402
from openai import (  # noqa: E402
    BadRequestError,
    NotFoundError,
    OpenAI,
    UnprocessableEntityError,
)

BIN = os.environ.get("MURMUR_BIN", str(REPO / "target" / "debug" / "murmur"))
ASK_NOT = re.compile(r"ask not what your country can do for you", re.I)


def murmur(*args):
    env = dict(os.environ, MURMUR__MODELS__DIR=str(h.cache_dir() / "models"))
    return subprocess.run([BIN, *args], env=env, check=True, capture_output=True, text=True).stdout


def words(text):
    return re.findall(r"[a-z']+", text.lower())


class OpenAiSdk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        murmur("models", "fetch", "tiny.en", "silero-vad")
        cls.jfk = Path(murmur("test-audio", "jfk").strip())
        cls.work = tempfile.TemporaryDirectory(prefix="murmur-py-sdk-")
        cls.server = h.Server(BIN, cls.work.name, prefix="murmur-py-sdk-").start()
        cls.tenant = cls.server.signup("PySdk")
        r = cls.server.post("/v1/api-keys", {"name": "python sdk"}, cls.tenant.token)
        assert r.status == 201, r.brief()
        host, port = cls.server.addr
        base = f"http://{host}:{port}/v1"
        cls.client = OpenAI(api_key=r.json()["token"], base_url=base, max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.work.cleanup()

    def test_models_list_and_retrieve(self):
        models = list(self.client.models.list())
        ids = [m.id for m in models]
        for name in ("tiny.en", "base", "whisper-1"):
            self.assertIn(name, ids)
        self.assertTrue(all(m.object == "model" and isinstance(m.created, int) for m in models))
        tiny = self.client.models.retrieve("tiny.en")
        self.assertEqual(tiny.id, "tiny.en")
        default = next(m for m in models if getattr(m, "default", False))
        self.assertEqual(self.client.models.retrieve("whisper-1").alias_of, default.id)
        with self.assertRaises(NotFoundError):
            self.client.models.retrieve("gpt-4o")

    def test_transcriptions_as_json_verbose_json_and_text(self):
        with open(self.jfk, "rb") as f:
            plain = self.client.audio.transcriptions.create(file=f, model="whisper-1")
        self.assertRegex(plain.text, ASK_NOT)
        with open(self.jfk, "rb") as f:
            verbose = self.client.audio.transcriptions.create(
                file=f, model="tiny.en", response_format="verbose_json"
            )
        self.assertEqual(verbose.language, "en")
        self.assertAlmostEqual(verbose.duration, 11.0, delta=0.5)
        self.assertGreaterEqual(len(verbose.segments), 1)
        with open(self.jfk, "rb") as f:
            text = self.client.audio.transcriptions.create(
                file=f, model="tiny.en", response_format="text"
            )
        self.assertRegex(text, ASK_NOT)

    def test_word_timestamps_with_timestamp_granularities(self):
        with open(self.jfk, "rb") as f:
            verbose = self.client.audio.transcriptions.create(
                file=f,
                model="tiny.en",
                response_format="verbose_json",
                timestamp_granularities=["word"],
            )
        self.assertRegex(verbose.text, ASK_NOT)
        self.assertIsNotNone(verbose.words)
        self.assertEqual(words(" ".join(w.word for w in verbose.words)), words(verbose.text))
        last_end = 0.0
        for w in verbose.words:
            self.assertLessEqual(w.start, w.end, w)
            self.assertGreaterEqual(w.start, last_end - 1e-9, w)
            last_end = w.end
        self.assertLess(verbose.words[0].start, 1.0)
        self.assertEqual(words(verbose.words[-1].word), ["country"])
        self.assertGreater(verbose.words[-1].end, 10.0)
        # Both granularities (the field sent twice): words and segments.
        with open(self.jfk, "rb") as f:
            both = self.client.audio.transcriptions.create(
                file=f,
                model="tiny.en",
                response_format="verbose_json",
                timestamp_granularities=["word", "segment"],
            )
        self.assertEqual(len(both.words), len(verbose.words))
        self.assertGreaterEqual(len(both.segments), 1)

    def test_a_streamed_transcription_joins_to_the_text(self):
        with open(self.jfk, "rb") as f:
            stream = self.client.audio.transcriptions.create(file=f, model="tiny.en", stream=True)
            events = list(stream)
        done = events[-1]
        self.assertEqual(done.type, "transcript.text.done")
        self.assertRegex(done.text, ASK_NOT)
        deltas = events[:-1]
        self.assertGreaterEqual(len(deltas), 1)
        self.assertTrue(all(e.type == "transcript.text.delta" for e in deltas))
        self.assertEqual("".join(e.delta for e in deltas), done.text)

    def test_errors_are_the_sdk_exception_classes(self):
        with open(self.jfk, "rb") as f:
            with self.assertRaises(BadRequestError) as caught:
                # The SDK's translations.create has no `stream` argument;
                # a client sending the field anyway is refused by name.
                self.client.audio.translations.create(
                    file=f, model="tiny.en", extra_body={"stream": "true"}
                )
        self.assertIn("stream", str(caught.exception))
        with open(self.jfk, "rb") as f:
            with self.assertRaises(BadRequestError):
                self.client.audio.transcriptions.create(
                    file=f, model="tiny.en", response_format="mp3"
                )
        with self.assertRaises(UnprocessableEntityError) as caught:
            self.client.audio.transcriptions.create(
                file=("notes.wav", b"this is not audio", "audio/wav"), model="tiny.en"
            )
        self.assertIn("notes.wav", str(caught.exception))

    def test_zz_another_tenant_sees_none_of_it(self):
        other = self.server.signup("PySdkOther")
        mine = self.server.get("/v1/jobs", self.tenant.token).json()["items"]
        self.assertGreaterEqual(len(mine), 3)
        self.assertEqual(self.server.get("/v1/jobs", other.token).json()["items"], [])
        for job in mine:
            self.assertEqual(self.server.get(f"/v1/jobs/{job['id']}", other.token).status, 404)


if __name__ == "__main__":
    unittest.main(verbosity=2)
