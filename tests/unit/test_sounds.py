"""The shipped prompts and ``agi-app install-sounds``."""

from __future__ import annotations

import array
import math
import stat
import sys
import wave
from pathlib import Path

import pytest

from agi_app import cli, sounds
from agi_app.validation import InvalidInput

REPO_SOUNDS = Path(__file__).resolve().parents[2] / "sounds"
LANGS = ("en", "ru")
# The prompts the call flows and the example IVR rely on.
PROMPTS = (
    "please-wait",
    "connecting",
    "client-busy",
    "client-noanswer",
    "call-error",
    "time-limit",
    "ivr-main",
    "ivr-sales",
    "ivr-support",
    "ivr-invalid",
    "ivr-timeout",
    "ivr-goodbye",
    "offer",
    "announcement",
)
FULL_SCALE = 32768


def samples(path: Path) -> array.array:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2
        data = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":  # WAV is little-endian
        data.byteswap()
    return data


def rms(data: array.array) -> float:
    return math.sqrt(sum(s * s for s in data) / len(data))


def write_wav(path: Path, seconds: float = 0.5, rate: int = 8000, channels: int = 1) -> Path:
    """A 440 Hz tone in the given format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    tone = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(n)))
    if channels == 2:
        tone = array.array("h", (s for s in tone for _ in range(2)))
    if sys.byteorder == "big":
        tone.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --- the shipped prompts ----------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", PROMPTS)
def test_prompt_is_asterisk_ready_speech(name: str, lang: str) -> None:
    path = REPO_SOUNDS / lang / f"{name}.wav"
    assert path.is_file(), f"missing {path}"
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getcomptype() == "NONE"
    assert 0.5 <= sounds.duration(path) <= 15.0

    data = samples(path)
    # Speech normalised to -3 dBFS averages far above this floor; silence,
    # a broken conversion or a near-empty file falls below it.
    assert rms(data) > 0.02 * FULL_SCALE
    assert max(abs(s) for s in data) > 0.5 * FULL_SCALE
    # The lead-in silence was trimmed: sound starts within 0.15 s (the quiet "th"
    # of "Thank you" is the slowest start, at 0.08 s).
    first_loud = next(i for i, s in enumerate(data) if abs(s) > 0.01 * FULL_SCALE)
    assert first_loud < 0.15 * 8000


def test_prompt_table_matches_files() -> None:
    table = (REPO_SOUNDS / "prompts.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in table if line and not line.startswith("#")]
    assert rows[0] == ["name", *LANGS]
    names = [row[0] for row in rows[1:]]
    assert set(PROMPTS) <= set(names)
    assert all(len(row) == 1 + len(LANGS) and all(row) for row in rows[1:])
    assert set(names) <= set(sounds.prompt_names(REPO_SOUNDS))


def test_available_lists_every_language_of_every_prompt() -> None:
    found = sounds.available(REPO_SOUNDS)
    for name in PROMPTS:
        assert found[name] == {lang: REPO_SOUNDS / lang / f"{name}.wav" for lang in LANGS}
    assert list(found) == sorted(found)


def test_default_source_dir_is_the_checkout_unless_overridden(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(sounds.ENV_SOURCE_DIR, raising=False)
    assert sounds.default_source_dir() == REPO_SOUNDS
    write_wav(tmp_path / "de" / "hallo.wav")
    monkeypatch.setenv(sounds.ENV_SOURCE_DIR, str(tmp_path))
    assert sounds.available() == {"hallo": {"de": tmp_path / "de" / "hallo.wav"}}
    assert sounds.prompt_names() == ["hallo"]


def test_duration_counts_frames(tmp_path) -> None:
    assert sounds.duration(write_wav(tmp_path / "a.wav", seconds=1.25)) == pytest.approx(1.25)


# --- install ----------------------------------------------------------------


def test_install_copies_into_lang_agi_app_layout(tmp_path) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "hello.wav", seconds=0.5)
    write_wav(src / "en" / "bye.wav", seconds=0.75)
    write_wav(src / "ru" / "hello.wav", seconds=1.0)
    (src / "README.md").write_text("not a prompt")
    (src / "prompts.tsv").write_text("name\ten\n")
    (src / "en" / "notes.txt").write_text("not a prompt")
    target = tmp_path / "asterisk-sounds"
    (target / "en").mkdir(parents=True)
    (target / "en" / "hello.gsm").write_bytes(b"asterisk's own")
    (target / "en" / "agi_app").mkdir()
    (target / "en" / "agi_app" / "admin-extra.wav").write_bytes(b"someone else's")

    written = sounds.install(target, src)

    assert written == [
        target / "en" / "agi_app" / "bye.wav",
        target / "en" / "agi_app" / "hello.wav",
        target / "ru" / "agi_app" / "hello.wav",
    ]
    assert tree(target) == {
        "en/hello.gsm",
        "en/agi_app/admin-extra.wav",
        "en/agi_app/bye.wav",
        "en/agi_app/hello.wav",
        "ru/agi_app/hello.wav",
    }
    for dest in written:
        lang, name = dest.parent.parent.name, dest.name
        assert dest.read_bytes() == (src / lang / name).read_bytes()
        # Asterisk usually runs as its own user: the prompts must be world-readable.
        assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert (target / "en" / "hello.gsm").read_bytes() == b"asterisk's own"
    assert (target / "en" / "agi_app" / "admin-extra.wav").read_bytes() == b"someone else's"


def test_install_replaces_our_files_atomically_and_leaves_no_temporaries(tmp_path) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "hello.wav", seconds=0.5)
    target = tmp_path / "t"
    target.mkdir()
    first = sounds.install(target, src)
    inode_before = first[0].stat().st_ino

    write_wav(src / "en" / "hello.wav", seconds=2.0)
    second = sounds.install(target, src)

    assert second == first
    assert sounds.duration(second[0]) == pytest.approx(2.0)
    # A rename puts a new file in place; an in-place rewrite would keep the inode.
    assert second[0].stat().st_ino != inode_before
    assert tree(target) == {"en/agi_app/hello.wav"}


def test_install_shipped_prompts(tmp_path) -> None:
    written = sounds.install(tmp_path)
    expected = {f"{lang}/agi_app/{name}.wav" for lang in LANGS for name in PROMPTS}
    assert expected <= {p.relative_to(tmp_path).as_posix() for p in written}
    assert tree(tmp_path) == {p.relative_to(tmp_path).as_posix() for p in written}


def test_cli_install_sounds_prints_each_path(tmp_path, monkeypatch, capsys) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "hello.wav")
    write_wav(src / "ru" / "hello.wav")
    monkeypatch.setenv(sounds.ENV_SOURCE_DIR, str(src))
    target = tmp_path / "t"
    target.mkdir()

    assert cli.main(["install-sounds", str(target)]) == 0

    assert capsys.readouterr().out.splitlines() == [
        str(target / "en" / "agi_app" / "hello.wav"),
        str(target / "ru" / "agi_app" / "hello.wav"),
    ]


def test_install_needs_an_existing_target(tmp_path) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "hello.wav")
    with pytest.raises(sounds.SoundsError, match="does not exist"):
        sounds.install(tmp_path / "typo", src)
    assert not (tmp_path / "typo").exists()


def test_install_needs_an_existing_source(tmp_path) -> None:
    with pytest.raises(sounds.SoundsError, match="does not exist"):
        sounds.install(tmp_path, tmp_path / "nowhere")


# --- bad names and formats are refused before anything is written ------------


@pytest.mark.parametrize(
    ("relpath", "reported"),
    [
        ("en/hello world.wav", "en/hello world.wav"),
        ("en/hello.world.wav", "en/hello.world.wav"),
        ("en/привет.wav", "en/привет.wav"),
        ("en/hello.WAV", "en/hello.WAV"),
        ("en/" + "x" * 65 + ".wav", "en/" + "x" * 65 + ".wav"),
        ("en/hello\n.wav", "en/hello\n.wav"),
        ("e n/hello.wav", "e n"),
        ("en$/hello.wav", "en$"),
    ],
)
def test_install_refuses_bad_names(tmp_path, relpath: str, reported: str) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "good.wav")
    write_wav(src / relpath)
    target = tmp_path / "t"
    target.mkdir()

    with pytest.raises(sounds.SoundsError) as e:
        sounds.install(target, src)

    assert str(src / reported) in str(e.value)
    assert tree(target) == set()
    with pytest.raises(sounds.SoundsError):
        sounds.available(src)


@pytest.mark.parametrize(
    ("rate", "channels", "why"),
    [(16000, 1, "16000 Hz"), (8000, 2, "2 channel")],
)
def test_install_refuses_other_audio_formats(tmp_path, rate, channels, why) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "good.wav")
    write_wav(src / "en" / "wrong.wav", rate=rate, channels=channels)
    (tmp_path / "t").mkdir()

    with pytest.raises(sounds.SoundsError, match=why):
        sounds.install(tmp_path / "t", src)
    assert tree(tmp_path / "t") == set()


def test_install_refuses_a_file_that_is_not_wav(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "en").mkdir(parents=True)
    (src / "en" / "fake.wav").write_bytes(b"ID3 this is an mp3")
    (tmp_path / "t").mkdir()
    with pytest.raises(sounds.SoundsError, match="not a PCM WAV"):
        sounds.install(tmp_path / "t", src)


def test_hidden_entries_are_ignored(tmp_path) -> None:
    src = tmp_path / "src"
    write_wav(src / "en" / "hello.wav")
    write_wav(src / ".git" / "x y.wav")
    write_wav(src / "en" / ".hello.wav.swp.wav")
    assert sounds.available(src) == {"hello": {"en": src / "en" / "hello.wav"}}


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        "../etc/passwd",
        "agi_app/offer",
        "offer.wav",
        "a b",
        "x" * 65,
        "оффер",
        "offer\n",
        "offer,1",
        7,
    ],
)
def test_check_name_refuses_names_from_outside(value) -> None:
    with pytest.raises(InvalidInput) as e:
        sounds.check_name(value)
    assert e.value.field == "voiceFileID"


@pytest.mark.parametrize("value", ["offer", "ivr-main", "Promo_2026", "x" * 64])
def test_check_name_accepts_prompt_names(value: str) -> None:
    assert sounds.check_name(value) == value


def test_playback_name() -> None:
    assert sounds.playback_name("please-wait") == "agi_app/please-wait"
    with pytest.raises(InvalidInput):
        sounds.playback_name("../please-wait")
