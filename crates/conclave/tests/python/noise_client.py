#!/usr/bin/env python3
"""End-to-end Conclave client over TCP+Noise, written against the independent
`noiseprotocol` package, for ../noise_python.rs.

It talks to a real `conclave serve`: registers an account over HTTP with a
fresh X25519 device key, fetches the server's Noise key from
/v1/server-info, runs the XK or IK handshake on the TCP port (CCP-1 Hello /
Auth frames carrying hex Noise messages), then speaks encrypted CCP-1 frames
cut into `u16 BE length | ciphertext` chunks. Everything it knows about the
protocol comes from docs/PROTOCOL.md (sections 2, 3, 6, 8, 9 and 12), not
from the Rust code, so a disagreement shows up as a failed check.

Standard library plus `noise` (and `cryptography`, which `noise` depends on,
for X25519 key generation) only.

Exit status 0 means every check passed, and a JSON summary is printed on
stdout; anything else is a failure whose reason is on stderr.

Usage:
  noise_client.py --http HOST:PORT --tcp HOST:PORT --pattern XK|IK
                  --username U --password P [--wrong-key]

With --wrong-key the device registers one static key but proves another in
the handshake; the script then passes only if the server refuses it with a
`key_mismatch` Goaway (IK: instead of message 2; XK: in plaintext where the
first ciphertext chunk was expected, after message 3).
"""

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

PROLOGUE = b"conclave/1"
SUITES = {
    "XK": b"Noise_XK_25519_ChaChaPoly_BLAKE2s",
    "IK": b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
}
HELLO, AUTH, ACK = 0x01, 0x02, 0x06
RPC_REQUEST, RPC_RESPONSE, EVENT, PING, PONG, GOAWAY = 0x20, 0x21, 0x22, 0x23, 0x24, 0x25
NOISE_PLAINTEXT_MAX_BYTES = 65_519
TAG_LEN_BYTES = 16
HANDSHAKE_FRAME_MAX_BYTES = 256 * 1024
FRAME_MAX_BYTES = 16 * 1024 * 1024
# A bio this long is over the server's 512-byte limit, so the request is a
# legitimate one that gets a clean `payload_too_large` answer, and its frame
# is longer than one Noise message: it must be sent as two chunks.
LARGE_BIO_CHARS = 70_000
GOOD_BIO = "written by the python noise client"
IO_TIMEOUT_SECS = 15.0


class Failure(Exception):
    pass


class WaitTimeout(Failure):
    pass


def check(condition, what):
    if not condition:
        raise Failure(what)


# --- CCP-1 framing (docs/PROTOCOL.md sections 1, 2, 5) ----------------------


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


def json_bytes(value):
    return json.dumps(value, separators=(",", ":")).encode()


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
    check(0 < frame_len <= FRAME_MAX_BYTES, "bad frame_len %d" % frame_len)
    if len(buffer) < pos + frame_len:
        return None
    frame = parse_body(buffer[pos : pos + frame_len])
    del buffer[: pos + frame_len]
    return frame


def json_object(payload, what):
    try:
        value = json.loads(payload)
    except ValueError as err:
        raise Failure("%s is not JSON: %s" % (what, err))
    check(isinstance(value, dict), "%s is not a JSON object" % what)
    return value


def as_plain_goaway(data):
    """If `data` starts with a complete plaintext Goaway frame (channel 0,
    sequence 0, JSON object payload with a code), returns that payload;
    otherwise None. Never raises: `data` may be ciphertext."""
    try:
        frame = take_frame(bytearray(data))
    except Failure:
        return None
    if frame is None:
        return None
    frame_type, channel, sequence, payload = frame
    if (frame_type, channel, sequence) != (GOAWAY, 0, 0):
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return None
    return body


# --- HTTP -------------------------------------------------------------------


def http_json(method, url, body=None):
    data = None if body is None else json_bytes(body)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT_SECS) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        raise Failure("%s %s: HTTP %d %s" % (method, url, err.code, err.read()[:500]))
    check(status == 200, "%s %s: HTTP %d" % (method, url, status))
    return json_object(raw, "%s %s response" % (method, url))


# --- TCP --------------------------------------------------------------------


class Wire:
    """A TCP socket with a receive buffer and a timeout on every call."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_SECS)
        self.sock.settimeout(IO_TIMEOUT_SECS)
        self.buffer = bytearray()
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def fill(self):
        """Reads more bytes into the buffer; returns False at EOF."""
        if self.eof:
            return False
        try:
            piece = self.sock.recv(65_536)
        except socket.timeout:
            raise WaitTimeout("timed out waiting for the server")
        except ConnectionResetError:
            piece = b""
        if not piece:
            self.eof = True
            return False
        self.buffer += piece
        return True

    def read_exact(self, count):
        while len(self.buffer) < count:
            check(self.fill(), "server closed the connection early")
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_plain_frame(self):
        """One plaintext CCP-1 frame (handshake phase)."""
        while True:
            frame = take_frame(self.buffer)
            if frame is not None:
                return frame
            check(len(self.buffer) <= HANDSHAKE_FRAME_MAX_BYTES, "handshake frame too large")
            check(self.fill(), "server closed the connection during the handshake")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Tunnel:
    """Transport mode over a Wire: seals outgoing streams into chunks and
    reassembles decrypted chunks into frames."""

    def __init__(self, wire, conn):
        self.wire = wire
        self.conn = conn
        self.plaintext = bytearray()
        self.frames = []
        self.chunks_sent = 0
        self.chunks_received = 0
        self.refusal = None
        self.write_closed = False
        self.pings = []

    def send_stream(self, stream):
        """Cuts the plaintext stream into chunks, one Noise message each;
        returns how many chunks it took."""
        out = bytearray()
        chunks = 0
        for start in range(0, len(stream), NOISE_PLAINTEXT_MAX_BYTES):
            ciphertext = self.conn.encrypt(bytes(stream[start : start + NOISE_PLAINTEXT_MAX_BYTES]))
            check(len(ciphertext) <= 0xFFFF, "ciphertext too long for its prefix")
            out += len(ciphertext).to_bytes(2, "big") + ciphertext
            chunks += 1
        self.wire.send(bytes(out))
        self.chunks_sent += chunks
        return chunks

    def receive_chunk(self):
        """Decrypts one more chunk into the frame buffer; returns False at a
        clean EOF between chunks. Until the first chunk has decrypted, a
        plaintext Goaway in its place is a refusal (section 12.2)."""
        while True:
            if self.chunks_received == 0:
                refusal = as_plain_goaway(self.wire.buffer)
                if refusal is not None:
                    self.refusal = refusal
                    raise Refused(refusal)
            if len(self.wire.buffer) >= 2:
                length = int.from_bytes(self.wire.buffer[:2], "big")
                check(length >= TAG_LEN_BYTES, "chunk shorter than a tag (%d)" % length)
                if len(self.wire.buffer) >= 2 + length:
                    ciphertext = bytes(self.wire.buffer[2 : 2 + length])
                    del self.wire.buffer[: 2 + length]
                    try:
                        plain = self.conn.decrypt(ciphertext)
                    except Exception as err:  # noise raises several types
                        raise Failure("chunk %d failed to decrypt: %r" % (self.chunks_received, err))
                    self.chunks_received += 1
                    self.plaintext += plain
                    while True:
                        frame = take_frame(self.plaintext)
                        if frame is None:
                            break
                        self.frames.append(frame)
                    return True
            if not self.wire.fill():
                check(not self.wire.buffer, "connection closed inside a chunk")
                return False

    def next_frame(self, deadline=None):
        """The next decrypted frame, answering server Pings on the way.
        None at a clean EOF. With a `deadline` (time.monotonic()), raises
        WaitTimeout once it has passed."""
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                frame_type, channel, sequence, payload = frame
                if frame_type == PING:
                    check(len(payload) <= 256, "Ping payload over 256 bytes")
                    self.pings.append((channel, sequence, payload))
                    if not self.write_closed:
                        self.send_stream(encode_frame(PONG, channel, sequence, payload))
                    continue
                return frame
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout("deadline reached")
                self.wire.sock.settimeout(min(remaining, IO_TIMEOUT_SECS))
            if not self.receive_chunk():
                check(not self.plaintext, "connection closed inside a frame")
                return None


class Refused(Exception):
    def __init__(self, body):
        super().__init__(body.get("code"))
        self.body = body


def check_refusal(body, code):
    check(body.get("code") == code, "refused with %r, expected %r" % (body, code))
    message = body.get("message")
    check(isinstance(message, str) and 0 < len(message.encode()) <= 1024, "bad refusal message %r" % message)


# --- the session ------------------------------------------------------------


def new_keypair():
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def handshake(wire, pattern, server_public, device_private, device_id):
    """Runs the handshake. Returns the NoiseConnection in transport mode,
    or raises Refused with the server's plaintext Goaway."""
    conn = NoiseConnection.from_name(SUITES[pattern])
    conn.set_as_initiator()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, device_private)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, server_public)
    conn.start_handshake()

    claim = json_bytes({"device_id": str(device_id), "supported_versions": [1]})
    message1 = conn.write_message(claim)
    wire.send(encode_frame(HELLO, 0, 0, json_bytes({"pattern": pattern, "handshake": bytes(message1).hex()})))

    frame_type, channel, sequence, payload = wire.read_plain_frame()
    check((channel, sequence) == (0, 0), "handshake reply not on channel 0 sequence 0")
    if frame_type == GOAWAY:
        raise Refused(json_object(payload, "Goaway payload"))
    check(frame_type == AUTH, "expected Auth, got type 0x%02x: %r" % (frame_type, payload[:200]))
    hex_message = json_object(payload, "Auth payload").get("handshake")
    check(isinstance(hex_message, str), "Auth without a handshake string")
    try:
        accepted = conn.read_message(bytes.fromhex(hex_message))
    except Exception as err:
        raise Failure("message 2 failed to decrypt: %r" % err)
    accepted = json_object(bytes(accepted), "message 2 payload")
    check(accepted.get("protocol_version") == 1, "message 2 payload is %r" % accepted)

    if pattern == "XK":
        message3 = conn.write_message(b"")
        wire.send(encode_frame(AUTH, 0, 0, json_bytes({"handshake": bytes(message3).hex()})))
    check(conn.handshake_finished, "handshake not finished after %s" % pattern)
    return conn


def rpc(seq, route, body):
    return encode_frame(RPC_REQUEST, 0, seq, json_bytes({"route": route, "body": body}))


def collect_responses(tunnel, wanted, pongs=None):
    """Reads frames until every sequence in `wanted` has an RpcResponse;
    returns {seq: payload dict}. Pongs go to `pongs` if given."""
    responses = {}
    while not wanted <= set(responses):
        frame = tunnel.next_frame()
        check(frame is not None, "server closed before answering %r" % sorted(wanted - set(responses)))
        frame_type, channel, sequence, payload = frame
        if frame_type == RPC_RESPONSE:
            check(channel == 0, "RpcResponse on channel %d" % channel)
            check(sequence in wanted and sequence not in responses, "unexpected response %d" % sequence)
            responses[sequence] = json_object(payload, "response %d" % sequence)
        elif frame_type == PONG and pongs is not None:
            pongs.append((sequence, payload))
        elif frame_type == EVENT:
            continue
        elif frame_type == GOAWAY:
            raise Failure("server sent Goaway %r" % payload)
        else:
            raise Failure("unexpected frame type 0x%02x" % frame_type)
    return responses


def run(args):
    base = "http://%s" % args.http
    info = http_json("GET", base + "/v1/server-info")
    server_key_hex = info.get("noise_public_key")
    check(isinstance(server_key_hex, str) and len(server_key_hex) == 64, "bad server key %r" % server_key_hex)
    server_public = bytes.fromhex(server_key_hex)

    device_private, device_public = new_keypair()
    grant = http_json(
        "POST",
        base + "/api/v1/account/user/register",
        {
            "username": args.username,
            "password": args.password,
            "device_name": "python noise client",
            "noise_public_key": device_public.hex(),
        },
    )
    user_id, device_id = grant.get("user_id"), grant.get("device_id")
    check(isinstance(user_id, str) and user_id.isdigit(), "user_id %r is not a decimal string" % user_id)
    check(isinstance(device_id, str) and device_id.isdigit(), "device_id %r is not a decimal string" % device_id)

    summary = {
        "pattern": args.pattern,
        "username": args.username,
        "user_id": user_id,
        "device_id": device_id,
        "wrong_key": args.wrong_key,
    }
    if args.wrong_key:
        # Registered `device_public`, but prove another key.
        device_private, _ = new_keypair()

    wire = Wire(args.tcp)
    try:
        try:
            conn = handshake(wire, args.pattern, server_public, device_private, device_id)
        except Refused as refused:
            check(args.wrong_key, "handshake refused: %r" % refused.body)
            check(args.pattern == "IK", "XK refused before message 3: %r" % refused.body)
            check_refusal(refused.body, "key_mismatch")
            check(not wire.fill() and not wire.buffer, "data after the refusal")
            summary.update(refused=refused.body["code"], refused_at="message_2")
            return summary
        check(args.pattern == "XK" or not args.wrong_key, "IK accepted a key it should have refused")
        summary["handshake_hash"] = conn.get_handshake_hash().hex()
        tunnel = Tunnel(wire, conn)

        # Pipelined behind the handshake, before the Ack has arrived (the
        # server must keep bytes that follow the last handshake frame): a
        # Ping of our own and a profile request, in one chunk.
        pongs = []
        if not args.wrong_key or args.pipeline:
            stream = encode_frame(PING, 0, 77, b"py-ping") + rpc(1, "account/user/detail", {})
            tunnel.send_stream(stream)

        # The server speaks first: an Ack, or (XK) a plaintext refusal.
        try:
            frame = tunnel.next_frame()
        except Refused as refused:
            check(args.wrong_key, "session refused: %r" % refused.body)
            check_refusal(refused.body, "key_mismatch")
            take_frame(wire.buffer)
            check(not wire.buffer and not wire.fill(), "data after the refusal")
            summary.update(refused=refused.body["code"], refused_at="message_3")
            return summary
        check(not args.wrong_key, "XK accepted a key it should have refused")
        check(frame is not None, "server closed before its Ack")
        frame_type, channel, sequence, payload = frame
        check((frame_type, channel, sequence) == (ACK, 0, 0), "first frame is type 0x%02x, not Ack" % frame_type)
        ack = json_object(payload, "Ack payload")
        for field in ("session_id", "user_id", "device_id", "protocol_version", "heartbeat_interval_ms"):
            check(field in ack, "Ack without %s: %r" % (field, ack))
        check(str(ack["user_id"]) == user_id, "Ack user_id %r, registered %r" % (ack["user_id"], user_id))
        check(str(ack["device_id"]) == device_id, "Ack device_id %r, registered %r" % (ack["device_id"], device_id))
        check(ack["protocol_version"] == 1, "Ack protocol_version %r" % ack["protocol_version"])
        check(isinstance(ack["heartbeat_interval_ms"], int) and ack["heartbeat_interval_ms"] > 0, "bad heartbeat")
        summary["ack"] = ack

        # 1. The answers to the pipelined Ping and request.
        detail = collect_responses(tunnel, {1}, pongs)[1]
        check(detail.get("ok") is True, "account/user/detail failed: %r" % detail)
        profile = detail.get("body") or {}
        check(profile.get("username") == args.username, "detail names %r" % profile.get("username"))
        check(str(profile.get("user_id")) == user_id, "detail user_id %r" % profile.get("user_id"))
        while not pongs:
            frame = tunnel.next_frame()
            check(frame is not None, "server closed before answering our Ping")
            check(frame[0] == PONG, "expected Pong, got type 0x%02x" % frame[0])
            pongs.append((frame[2], frame[3]))
        check(pongs == [(77, b"py-ping")], "Pong %r does not echo our Ping" % pongs)

        # 2. A stream longer than one Noise message: a request whose bio is
        # over the limit (two chunks), then a valid update whose frame starts
        # in the second chunk, then a read-back.
        large = rpc(2, "account/user/update", {"bio": "x" * LARGE_BIO_CHARS})
        check(len(large) > NOISE_PLAINTEXT_MAX_BYTES, "the large request fits one chunk")
        stream = large + rpc(3, "account/user/update", {"bio": GOOD_BIO})
        large_chunks = tunnel.send_stream(stream)
        check(large_chunks == 2, "the large stream took %d chunks" % large_chunks)
        responses = collect_responses(tunnel, {2, 3})
        too_large = responses[2]
        check(too_large.get("ok") is False, "oversized bio accepted: %r" % too_large)
        error = too_large.get("error") or {}
        check(error.get("code") == "payload_too_large", "oversized bio gave %r" % error)
        check(isinstance(error.get("message"), str), "error without a message")
        updated = responses[3]
        check(updated.get("ok") is True, "valid update failed: %r" % updated)
        check((updated.get("body") or {}).get("bio") == GOOD_BIO, "update returned %r" % updated)
        tunnel.send_stream(rpc(4, "account/user/detail", {}))
        again = collect_responses(tunnel, {4})[4]
        check((again.get("body") or {}).get("bio") == GOOD_BIO, "bio not stored: %r" % again)

        # 3. Optionally stay quiet but for Pongs for a while: the server's
        # Pings arrive through the tunnel, and answering them keeps the
        # session past the idle timeout.
        if args.heartbeat_wait > 0:
            deadline = time.monotonic() + args.heartbeat_wait
            while True:
                try:
                    frame = tunnel.next_frame(deadline)
                except WaitTimeout:
                    break
                check(frame is not None, "server closed the session while we answered its Pings")
                check(frame[0] == EVENT, "unexpected frame 0x%02x while idle" % frame[0])
            wire.sock.settimeout(IO_TIMEOUT_SECS)
            pings = tunnel.pings
            check(len(pings) >= 2, "only %d server Pings in %.1f s" % (len(pings), args.heartbeat_wait))
            check(all(channel == 0 for channel, _, _ in pings), "Ping off channel 0")
            sequences = [sequence for _, sequence, _ in pings]
            check(sequences == sorted(set(sequences)), "Ping sequences not increasing: %r" % sequences)
            tunnel.send_stream(rpc(5, "account/user/detail", {}))
            alive = collect_responses(tunnel, {5})[5]
            check(alive.get("ok") is True, "session unusable after idling: %r" % alive)
            summary.update(server_pings=len(pings), alive_after_idle=True)

        summary.update(
            large_request_bytes=len(large),
            large_stream_chunks=large_chunks,
            responses={"2": too_large, "3": updated.get("ok")},
        )

        # 4. Close our side; the server must end cleanly, with nothing but
        # heartbeats before its EOF.
        wire.sock.shutdown(socket.SHUT_WR)
        tunnel.write_closed = True
        while True:
            frame = tunnel.next_frame()
            if frame is None:
                break
            check(frame[0] in (EVENT,), "unexpected frame 0x%02x after closing" % frame[0])
        summary.update(
            chunks_sent=tunnel.chunks_sent,
            chunks_received=tunnel.chunks_received,
            closed_cleanly=True,
        )
        return summary
    finally:
        wire.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", required=True, help="HOST:PORT of the HTTP listener")
    parser.add_argument("--tcp", required=True, help="HOST:PORT of the TCP+Noise listener")
    parser.add_argument("--pattern", required=True, choices=sorted(SUITES))
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--wrong-key", action="store_true", help="prove a key other than the registered one")
    parser.add_argument(
        "--heartbeat-wait",
        type=float,
        default=0.0,
        help="seconds to idle at the end, answering the server's Pings",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="with --wrong-key: send encrypted data right behind XK message 3, as a hasty client would",
    )
    args = parser.parse_args()
    try:
        summary = run(args)
    except Failure as failure:
        sys.stderr.write("FAIL: %s\n" % failure)
        return 1
    except (OSError, socket.timeout) as err:
        sys.stderr.write("FAIL: I/O error: %r\n" % err)
        return 1
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    sys.stdout.flush()
    sys.stderr.write("PASS\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
