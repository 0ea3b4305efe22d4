#!/usr/bin/env python3
"""Conclave Noise tunnel client written against the independent `noiseprotocol`
package, for the interop test in ../python_interop.rs.

It plays the initiator over stdin/stdout: CCP-1 frames (Hello, Auth) during
the handshake, then `u16 BE length | ciphertext` chunks. Everything it knows
about the protocol comes from docs/PROTOCOL.md, not from the Rust code, so
a disagreement between the two implementations shows up as a failed check.

Exit status 0 means every check passed; anything else is a failure whose
reason is on stderr. The line `HASH <hex>` on stderr reports the handshake
hash so the Rust side can compare it with its own.

Usage:
  noise_initiator.py PATTERN SERVER_PUBLIC_HEX DEVICE_PRIVATE_HEX DEVICE_ID EXPECT
    PATTERN  XK or IK
    EXPECT   ok       full handshake, then the encrypted exchange
             refused  the server must refuse with a key_mismatch Goaway
"""

import json
import sys

from noise.connection import Keypair, NoiseConnection

PROLOGUE = b"conclave/1"
SUITES = {
    "XK": b"Noise_XK_25519_ChaChaPoly_BLAKE2s",
    "IK": b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
}
HELLO, AUTH, MSG, VIDEO_FRAME = 0x01, 0x02, 0x05, 0x12
RPC_REQUEST, RPC_RESPONSE, GOAWAY = 0x20, 0x21, 0x25
NOISE_PLAINTEXT_MAX_BYTES = 65_519
TAG_LEN_BYTES = 16
# Bounds for what we accept from the server: a handshake frame is small.
HANDSHAKE_FRAME_MAX_BYTES = 256 * 1024
LARGE_MSG_BYTES = 70_000  # crosses one chunk boundary
VIDEO_BYTES = 150_000  # what the Rust side sends back: three chunks


class Failure(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failure(what)


def varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data, pos):
    """Decodes a canonical LEB128 u64 at data[pos:]; returns (value, new_pos)."""
    value, shift, start = 0, 0, pos
    while True:
        check(pos < len(data), "varint runs past its frame")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        check(pos - start < 10, "varint longer than 10 bytes")
    check(value < 1 << 64, "varint beyond u64")
    check(pos - start == 1 or data[pos - 1] != 0, "non-canonical varint")
    return value, pos


def encode_frame(frame_type, channel, sequence, payload):
    body = bytes([frame_type]) + varint(channel) + varint(sequence) + varint(len(payload)) + payload
    return varint(len(body)) + body


def parse_body(body):
    check(len(body) >= 1, "empty frame body")
    frame_type = body[0]
    channel, pos = read_varint(body, 1)
    sequence, pos = read_varint(body, pos)
    payload_len, pos = read_varint(body, pos)
    check(payload_len == len(body) - pos, "payload_len does not match the frame")
    return frame_type, channel, sequence, bytes(body[pos:])


def take_frame(buffer):
    """Removes one complete frame from the front of `buffer` (a bytearray);
    returns it, or None if the buffer holds only part of one."""
    try:
        frame_len, pos = read_varint(buffer, 0)
    except Failure:
        if len(buffer) < 10:
            return None
        raise
    if len(buffer) < pos + frame_len:
        return None
    frame = parse_body(buffer[pos : pos + frame_len])
    del buffer[: pos + frame_len]
    return frame


def read_exact(count):
    data = bytearray()
    while len(data) < count:
        piece = sys.stdin.buffer.read(count - len(data))
        check(piece, "server closed the connection early")
        data += piece
    return bytes(data)


def read_plain_frame():
    """Reads one plaintext CCP-1 frame from stdin."""
    prefix = bytearray()
    while True:
        prefix += read_exact(1)
        if not prefix[-1] & 0x80:
            break
        check(len(prefix) < 10, "frame length varint too long")
    frame_len, _ = read_varint(prefix, 0)
    check(frame_len <= HANDSHAKE_FRAME_MAX_BYTES, "handshake frame too large")
    return parse_body(read_exact(frame_len))


def send(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def send_json_frame(frame_type, value):
    payload = json.dumps(value, separators=(",", ":")).encode()
    send(encode_frame(frame_type, 0, 0, payload))


def expect_refusal(frame):
    frame_type, channel, sequence, payload = frame
    check(frame_type == GOAWAY, "expected a Goaway, got type 0x%02x" % frame_type)
    check((channel, sequence) == (0, 0), "Goaway not on channel 0 sequence 0")
    body = json.loads(payload)
    check(body.get("code") == "key_mismatch", "Goaway code is %r" % body.get("code"))
    check(isinstance(body.get("message"), str), "Goaway without a message")


def seal(conn, plaintext):
    """Cuts the plaintext stream into chunks, one Noise message each."""
    out = bytearray()
    for start in range(0, len(plaintext), NOISE_PLAINTEXT_MAX_BYTES):
        ciphertext = conn.encrypt(bytes(plaintext[start : start + NOISE_PLAINTEXT_MAX_BYTES]))
        check(len(ciphertext) <= 0xFFFF, "ciphertext too long for its prefix")
        out += len(ciphertext).to_bytes(2, "big") + ciphertext
    return bytes(out)


def run(pattern, server_public, device_private, device_id, expect):
    conn = NoiseConnection.from_name(SUITES[pattern])
    conn.set_as_initiator()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, device_private)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, server_public)
    conn.start_handshake()

    # Message 1 in a Hello frame; the claim travels encrypted inside it.
    claim = json.dumps({"device_id": str(device_id), "supported_versions": [1]}).encode()
    message1 = conn.write_message(claim)
    send_json_frame(HELLO, {"pattern": pattern, "handshake": bytes(message1).hex()})

    # Message 2 in an Auth frame, or the IK refusal.
    frame = read_plain_frame()
    if expect == "refused" and pattern == "IK":
        expect_refusal(frame)
        return
    frame_type, channel, sequence, payload = frame
    check(frame_type == AUTH, "expected Auth, got type 0x%02x: %r" % (frame_type, payload))
    check((channel, sequence) == (0, 0), "Auth not on channel 0 sequence 0")
    accepted = json.loads(bytes(conn.read_message(bytes.fromhex(json.loads(payload)["handshake"]))))
    check(accepted == {"protocol_version": 1}, "message 2 payload is %r" % accepted)

    if pattern == "XK":
        message3 = conn.write_message(b"")
        send_json_frame(AUTH, {"handshake": bytes(message3).hex()})
        if expect == "refused":
            expect_refusal(read_plain_frame())
            return
    check(conn.handshake_finished, "handshake not finished after %s" % pattern)
    check(expect == "ok", "the server accepted a key it should have refused")
    sys.stderr.write("HASH %s\n" % conn.get_handshake_hash().hex())
    sys.stderr.flush()

    # Transport: one RPC request, and a Msg frame that spans two chunks.
    request = json.dumps({"route": "echo", "body": {"n": 1}}, separators=(",", ":")).encode()
    large = bytes(i % 241 for i in range(LARGE_MSG_BYTES))
    # One stream, so the first chunk holds the request and the start of the
    # Msg frame: chunk boundaries need not match frame boundaries.
    stream = encode_frame(RPC_REQUEST, 0, 1, request) + encode_frame(MSG, 3, 2, large)
    check(len(stream) > NOISE_PLAINTEXT_MAX_BYTES, "the stream should need two chunks")
    send(seal(conn, stream))

    # The server answers with an RpcResponse and a three-chunk VideoFrame.
    plaintext = bytearray()
    frames = []
    while len(frames) < 2:
        length = int.from_bytes(read_exact(2), "big")
        check(length >= TAG_LEN_BYTES, "chunk shorter than a tag")
        plaintext += conn.decrypt(read_exact(length))
        while True:
            frame = take_frame(plaintext)
            if frame is None:
                break
            frames.append(frame)
    check(len(frames) == 2 and not plaintext, "unexpected extra data from the server")
    frame_type, channel, sequence, payload = frames[0]
    check((frame_type, channel, sequence) == (RPC_RESPONSE, 0, 1), "bad response header")
    check(json.loads(payload) == {"ok": True, "body": {"n": 1}}, "bad response %r" % payload)
    frame_type, channel, sequence, payload = frames[1]
    check((frame_type, channel, sequence) == (VIDEO_FRAME, 7, 99), "bad video header")
    check(payload == bytes(i % 239 for i in range(VIDEO_BYTES)), "video payload differs")

    # Nothing more may arrive: the server closes its side now.
    check(sys.stdin.buffer.read(1) == b"", "data after the last frame")


def main():
    if len(sys.argv) != 6:
        sys.stderr.write(__doc__)
        return 2
    pattern, server_public, device_private, device_id, expect = sys.argv[1:]
    try:
        check(pattern in SUITES, "unknown pattern %r" % pattern)
        check(expect in ("ok", "refused"), "unknown expectation %r" % expect)
        run(pattern, bytes.fromhex(server_public), bytes.fromhex(device_private), int(device_id), expect)
    except Failure as failure:
        sys.stderr.write("FAIL: %s\n" % failure)
        return 1
    sys.stderr.write("PASS\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
