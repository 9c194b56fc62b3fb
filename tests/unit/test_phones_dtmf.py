"""The sandbox phones' DTMF captures, re-numbered so keys can come in any
order (the shipped captures are numbered 1, 2 ... 9 of one recording)."""

from __future__ import annotations

import struct

import pytest

from agi_app.sandbox.scenarios import Captures, renumber_dtmf


def _capture(seq0: int, ts: int, event: int, packets: int = 4) -> bytes:
    """A pcap like SIPp's: Ethernet + IPv4 + UDP + RTP (PT 101) per packet."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i in range(packets):
        rtp = struct.pack(">BBHII", 0x80, 101 | (0x80 if i == 0 else 0), seq0 + i, ts, 0xE05384E)
        rtp += bytes([event, 0x0A]) + struct.pack(">H", 320 * i)
        udp = struct.pack(">HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = bytes([0x45, 0]) + struct.pack(">H", 20 + len(udp)) + bytes(16) + udp
        frame = bytes(12) + b"\x08\x00" + ip
        out += struct.pack("<IIII", 1_134_424_480, 20_000 * i, len(frame), len(frame)) + frame
    return out


def _rtp(capture: bytes) -> list[tuple[int, int, int, bytes]]:
    """(seq, timestamp, ssrc, payload) of every packet."""
    out, offset = [], 24
    while offset < len(capture):
        length = struct.unpack("<I", capture[offset + 8 : offset + 12])[0]
        frame = capture[offset + 16 : offset + 16 + length]
        rtp = frame[14 + 20 + 8 :]
        seq, ts, ssrc = struct.unpack(">HII", rtp[2:12])
        out.append((seq, ts, ssrc, rtp[12:]))
        offset += 16 + length
    return out


def test_a_later_key_always_comes_after_an_earlier_one_whatever_the_digits():
    nine = _capture(seq0=8300, ts=90000, event=9)
    one = _capture(seq0=7984, ts=13280, event=1)
    first, second = _rtp(renumber_dtmf(nine, 0)), _rtp(renumber_dtmf(one, 1))
    # the key pressed second has later sequence numbers and a later timestamp
    assert max(p[0] for p in first) < min(p[0] for p in second)
    assert first[0][1] < second[0][1]
    # within a key: consecutive sequence numbers, one timestamp, payload and
    # SSRC untouched
    assert [p[0] for p in second] == list(range(second[0][0], second[0][0] + 4))
    assert {p[1] for p in second} == {second[0][1]}
    assert [(p[2], p[3]) for p in second] == [(p[2], p[3]) for p in _rtp(one)]


def test_everything_but_seq_and_timestamp_is_kept():
    one = _capture(seq0=7984, ts=13280, event=1)
    out = renumber_dtmf(one, 3)
    assert len(out) == len(one)
    changed = [i for i, (a, b) in enumerate(zip(one, out, strict=True)) if a != b]
    # only bytes inside the RTP header's seq/timestamp fields differ
    offset, allowed = 24, set()
    while offset < len(one):
        length = struct.unpack("<I", one[offset + 8 : offset + 12])[0]
        rtp = offset + 16 + 14 + 20 + 8
        allowed.update(range(rtp + 2, rtp + 8))
        offset += 16 + length
    assert changed and set(changed) <= allowed


def test_not_a_pcap_is_refused():
    with pytest.raises(ValueError, match="pcap"):
        renumber_dtmf(b"\x0a\x0d\x0d\x0a" + bytes(40), 0)


def test_the_captures_are_made_once_per_digit_and_step(tmp_path):
    captures = Captures(pcaps=tmp_path, cache=tmp_path / "cache")
    (tmp_path / "dtmf_2833_pound.pcap").write_bytes(_capture(100, 500, 11))
    path = captures.key("#", 2)
    assert path.parent == tmp_path / "cache" and path.exists()
    assert _rtp(path.read_bytes())[0][:2] == (1000 + 64 * 2, 16000 * 3)
    (tmp_path / "dtmf_2833_pound.pcap").unlink()
    assert captures.key("#", 2) == path  # kept: not made again
