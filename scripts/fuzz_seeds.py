#!/usr/bin/env python3
"""Writes small, valid seed inputs for the fuzz targets in fuzz/.

Usage: fuzz_seeds.py TARGET DIR. Audio seeds come from ffmpeg (tiny WAV,
FLAC, MP3, Ogg Vorbis and M4A files); the others are built here byte by byte
in the formats the readers parse, so the fuzzer starts from inputs that get
past every header check. Nothing is downloaded; nothing here is committed.
"""

import base64
import os
import struct
import subprocess
import sys


def write(directory, name, data):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def audio(directory):
    # A short tone in several containers and layouts; small files keep the
    # fuzzer's inputs (and so each execution) small.
    jobs = [
        ("tone.wav", ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"]),
        ("stereo.wav", ["-ar", "22050", "-ac", "2", "-c:a", "pcm_u8"]),
        ("float.wav", ["-ar", "16000", "-ac", "1", "-c:a", "pcm_f32le"]),
        ("tone.flac", ["-ar", "8000", "-ac", "1", "-c:a", "flac"]),
        ("tone.mp3", ["-ar", "8000", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "8k"]),
        ("tone.ogg", ["-ar", "8000", "-ac", "1", "-c:a", "libvorbis", "-q:a", "0"]),
        ("tone.m4a", ["-ar", "8000", "-ac", "1", "-c:a", "aac", "-b:a", "8k"]),
        ("voice.opus", ["-ac", "1", "-c:a", "libopus", "-b:a", "6k"]),
        ("stereo.webm", ["-ac", "2", "-c:a", "libopus", "-b:a", "16k"]),
        ("tone.mkv", ["-ar", "8000", "-ac", "1", "-c:a", "libvorbis", "-q:a", "0"]),
        ("alac.m4a", ["-ar", "8000", "-ac", "1", "-c:a", "alac"]),
        ("tone.aiff", ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16be"]),
        ("tone.caf", ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"]),
    ]
    for name, codec in jobs:
        out = os.path.join(directory, name)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", "sine=frequency=440:duration=0.05", *codec,
             "-map_metadata", "-1", "-fflags", "+bitexact", out],
            check=True,
        )


def multipart(directory):
    boundary = b"murmur-fuzz-boundary"

    def body(parts):
        out = b""
        for headers, content in parts:
            out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
        return out + b"--" + boundary + b"--\r\n"

    upload = body([
        (b'Content-Disposition: form-data; name="model"', b"tiny.en"),
        (b'Content-Disposition: form-data; name="file"; filename="../a\\b.wav"\r\n'
         b"Content-Type: audio/wav", b"RIFF\x24\x00\x00\x00WAVEfmt "),
    ])
    # First byte >= 32: the well-formed Content-Type with our boundary.
    write(directory, "upload", b"\xff" + upload)
    ct = b"multipart/form-data; boundary=x"
    write(directory, "own-boundary", bytes([len(ct)]) + ct
          + b'--x\r\nContent-Disposition: form-data; name="file"; filename*=UTF-8\'\'%e2%82%ac.mp3'
          b"\r\n\r\nID3\r\n--x--\r\n")
    write(directory, "empty", b"\xff")


def tokens(directory):
    # Mode byte, then the mutation ops (see fuzz_targets/tokens.rs).
    write(directory, "text", b"\x00" + base64.urlsafe_b64encode(b"\x0a\x10" + bytes(64)))
    write(directory, "login-flip", b"\x01" + bytes([0, 10, 0]))
    write(directory, "key-append", b"\x02" + bytes([2, 0x41, 0]) * 4)
    write(directory, "key-truncate", b"\x02" + bytes([3, 0x80, 0x01]))
    write(directory, "login-text", b"\x01" + bytes([4, 7, 0, 5, 0x3d, 0]))


def ct2(directory):
    def string(s):
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    variables = []

    def var(name, shape, dtype=0, fill=b"\x00"):
        size = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}[dtype]
        n = size
        for d in shape:
            n *= d
        variables.append((name, shape, dtype, (fill * n)[:n]))

    d, mels, vocab, ffn, src, tgt = 2, 2, 3, 4, 2, 2
    var("encoder/conv1/weight", [d, mels, 3])
    var("encoder/conv1/bias", [d])
    var("encoder/conv2/weight", [d, d, 3])
    var("encoder/conv2/bias", [d])
    var("encoder/position_encodings/encodings", [src, d])
    var("encoder/num_heads", [], 3, b"\x01\x00\x00\x00")
    var("decoder/num_heads", [], 3, b"\x01\x00\x00\x00")

    def norm(prefix):
        var(prefix + "/gamma", [d])
        var(prefix + "/beta", [d])

    def linear(prefix, out_dim, in_dim):
        var(prefix + "/weight", [out_dim, in_dim], 4, b"\x00\x3c")
        var(prefix + "/bias", [out_dim], 4)

    for side in ("encoder", "decoder"):
        layer = side + "/layer_0"
        norm(layer + "/self_attention/layer_norm")
        linear(layer + "/self_attention/linear_0", 3 * d, d)
        linear(layer + "/self_attention/linear_1", d, d)
        if side == "decoder":
            norm(layer + "/attention/layer_norm")
            linear(layer + "/attention/linear_0", d, d)
            linear(layer + "/attention/linear_1", 2 * d, d)
            linear(layer + "/attention/linear_2", d, d)
        norm(layer + "/ffn/layer_norm")
        linear(layer + "/ffn/linear_0", ffn, d)
        linear(layer + "/ffn/linear_1", d, ffn)
        norm(side + "/layer_norm")
    var("decoder/embeddings/weight", [vocab, d], 4)
    var("decoder/position_encodings/encodings", [tgt, d])

    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, shape, dtype, data in variables:
        out += string(name) + bytes([len(shape)])
        out += b"".join(struct.pack("<I", x) for x in shape)
        out += bytes([dtype]) + struct.pack("<I", len(data)) + data
    aliases = [("decoder/projection/weight", "decoder/embeddings/weight")]
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += string(alias) + string(target)
    write(directory, "whisper.bin", out)
    write(directory, "empty-model.bin",
          struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<III", 3, 0, 0))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def tfbundle(directory):
    def block(entries):
        out = b""
        for key, value in entries:
            out += varint(0) + varint(len(key)) + varint(len(value)) + key + value
        return out + struct.pack("<II", 0, 1)  # one restart at offset 0

    def proto_varint(field, v):
        return varint(field << 3) + varint(v)

    def proto_bytes(field, b):
        return varint(field << 3 | 2) + varint(len(b)) + b

    tensor = struct.pack("<4f", 1.0, -2.0, 0.5, 0.25)
    shape = proto_bytes(2, proto_varint(1, 2)) + proto_bytes(2, proto_varint(1, 2))
    entry = (proto_varint(1, 1) + proto_bytes(2, shape) + proto_varint(3, 0)
             + proto_varint(4, 0) + proto_varint(5, len(tensor))
             + varint(6 << 3 | 5) + struct.pack("<I", masked(crc32c(tensor))))
    header = proto_varint(1, 1)
    table = b""

    def add(data):
        nonlocal table
        offset = len(table)
        table += data + b"\0" + struct.pack("<I", masked(crc32c(b"\0", crc32c(data))))
        return varint(offset) + varint(len(data))

    data_handle = add(block([(b"", header), (b"weights", entry)]))
    meta_handle = add(block([]))
    index_handle = add(block([(b"weights\xff", data_handle)]))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    index = table + footer
    # The fuzz target's layout: u32 index length, the index, then shard 0.
    write(directory, "bundle", struct.pack("<I", len(index)) + index + tensor)


SEEDS = {"audio_decode": audio, "multipart": multipart, "tokens": tokens,
         "ct2": ct2, "tfbundle": tfbundle}

if __name__ == "__main__":
    target, directory = sys.argv[1], sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    SEEDS[target](directory)
