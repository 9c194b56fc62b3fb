"""The prompts agi_app plays, and installing them where Asterisk finds them.

The project's ``sounds/`` folder holds one folder per language with one WAV
file per prompt: ``sounds/<lang>/<name>.wav`` (8 kHz, mono, 16-bit PCM, what
Asterisk's ``wav`` format plays without transcoding). :func:`install` copies
them to ``<ASTERISK_SOUNDS_DIR>/<lang>/agi_app/<name>.wav``; the application
then plays a prompt as ``agi_app/<name>`` (see :func:`playback_name`) and
Asterisk picks the folder of the channel's language.

A prompt's name is also its ``voiceFileID`` in the API: :func:`check_name`
validates such an ID before it goes anywhere near a dialplan application.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import wave
from pathlib import Path

from agi_app.shipped import shipped_dir
from agi_app.validation import InvalidInput

__all__ = [
    "SUBDIR",
    "SAMPLE_RATE",
    "SoundsError",
    "default_source_dir",
    "available",
    "prompt_names",
    "duration",
    "check_name",
    "playback_name",
    "install",
]

#: The folder under ``<sounds>/<lang>/`` that holds our prompts, so they never
#: clash with Asterisk's own (``agi_app/please-wait`` vs ``please-wait``).
SUBDIR = "agi_app"
#: What Asterisk's ``wav`` format reads: 8 kHz, mono, 16-bit signed PCM.
SAMPLE_RATE = 8000
CHANNELS = 1
SAMPLE_WIDTH = 2

#: The environment variable that points :func:`default_source_dir` elsewhere.
ENV_SOURCE_DIR = "AGI_APP_SOUNDS_DIR"

# Prompt names and language folder names. re.ASCII: no Unicode letters, which
# would reach Asterisk's file lookup and the API as something else. Used with
# fullmatch: "$" alone would let a trailing newline through.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


class SoundsError(ValueError):
    """The sounds folder holds something that cannot be installed (a bad name,
    a file in another audio format) or a folder is missing."""


def default_source_dir() -> Path:
    """The prompts folder: ``$AGI_APP_SOUNDS_DIR`` if set, else the shipped
    ``sounds/`` (of the checkout, or installed: :func:`agi_app.shipped.shipped_dir`)."""
    env = os.environ.get(ENV_SOURCE_DIR)
    if env:
        return Path(env)
    return shipped_dir() / "sounds"


def _is_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value))


def check_name(value: object, field: str = "voiceFileID") -> str:
    """Validate a prompt name coming from outside (an API's ``voiceFileID``,
    an IVR menu's prompt): 1 to 64 of ``A-Z a-z 0-9 _ -``.

    Returns the name, or raises :class:`~agi_app.validation.InvalidInput`
    naming ``field``. Slashes, dots and spaces are refused, so a name can never
    point outside ``agi_app/`` or carry AGI/dialplan syntax.
    """
    if value is None or value == "":
        raise InvalidInput(field, f"{field} is required", code=f"missing_{field}")
    if not isinstance(value, str) or not _is_name(value):
        raise InvalidInput(field, f"{field} must be 1 to 64 of A-Z a-z 0-9 _ -")
    return value


def playback_name(name: str) -> str:
    """What Playback/Background take for prompt ``name``: ``agi_app/<name>``
    (no extension, no language: Asterisk adds both)."""
    return f"{SUBDIR}/{check_name(name, 'name')}"


def _source(source_dir: str | Path | None) -> Path:
    src = Path(source_dir) if source_dir is not None else default_source_dir()
    if not src.is_dir():
        hint = "" if source_dir is not None else f" (set {ENV_SOURCE_DIR} to the project's sounds/)"
        raise SoundsError(f"sounds folder {src} does not exist{hint}")
    return src


def _scan(src: Path) -> dict[str, dict[str, Path]]:
    """name -> lang -> path of every ``<src>/<lang>/<name>.wav``; raises
    :class:`SoundsError` listing every language folder or file with a bad name."""
    found: dict[str, dict[str, Path]] = {}
    bad: list[str] = []
    for lang_dir in sorted(src.iterdir()):
        # Dot entries are editor and version-control leftovers, not languages.
        if lang_dir.name.startswith(".") or not lang_dir.is_dir():
            continue
        if not _is_name(lang_dir.name):
            bad.append(str(lang_dir))
            continue
        for path in sorted(lang_dir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() != ".wav":
                continue
            if not path.is_file() or path.suffix != ".wav" or not _is_name(path.stem):
                bad.append(str(path))
                continue
            found.setdefault(path.stem, {})[lang_dir.name] = path
    if bad:
        raise SoundsError(
            "names must be 1 to 64 of A-Z a-z 0-9 _ - (files as <lang>/<name>.wav): "
            + ", ".join(bad)
        )
    return dict(sorted(found.items()))


def available(source_dir: str | Path | None = None) -> dict[str, dict[str, Path]]:
    """Every prompt in the sounds folder: ``{name: {lang: path}}``, sorted by
    name. Raises :class:`SoundsError` if a file or folder has a bad name."""
    return _scan(_source(source_dir))


def prompt_names(source_dir: str | Path | None = None) -> list[str]:
    """The sorted names of the prompts present in at least one language."""
    return list(available(source_dir))


def duration(path: str | Path) -> float:
    """Length of a PCM WAV file in seconds."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def _format_problem(path: Path) -> str | None:
    """Why Asterisk's ``wav`` format would not play ``path`` as-is, or None."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            frames = w.getnframes()
    except (wave.Error, EOFError) as e:
        return f"not a PCM WAV file ({e})"
    if (rate, channels, width) != (SAMPLE_RATE, CHANNELS, SAMPLE_WIDTH):
        return f"{rate} Hz, {channels} channel(s), {8 * width}-bit"
    if frames == 0:
        return "no audio"
    return None


def _copy_atomic(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary file in the same folder and
    a rename, so a channel playing ``dest`` meanwhile reads the old file or the
    new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates 0600; Asterisk often runs as its own user and must read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def install(target_dir: str | Path, source_dir: Path | None = None) -> list[Path]:
    """Copy every ``<source>/<lang>/<name>.wav`` to
    ``<target_dir>/<lang>/agi_app/<name>.wav`` and return the written paths.

    ``target_dir`` is Asterisk's sounds folder (``astdatadir/sounds``, e.g.
    ``/usr/share/asterisk/sounds``) and must exist; the language and
    ``agi_app`` folders are created as needed. Files already there that are not
    ours are left alone; ours are replaced atomically. Everything is checked
    first (names, 8 kHz mono 16-bit PCM), so a bad file raises
    :class:`SoundsError` before anything is written.
    """
    target = Path(target_dir)
    if not target.is_dir():
        raise SoundsError(f"target folder {target} does not exist (Asterisk's sounds folder)")
    prompts = _scan(_source(source_dir))

    problems = []
    for langs in prompts.values():
        for path in langs.values():
            why = _format_problem(path)
            if why:
                problems.append(f"{path}: {why}")
    if problems:
        raise SoundsError(
            "Asterisk needs 8 kHz mono 16-bit PCM WAV (sox IN -r 8000 -c 1 -b 16 "
            "-e signed-integer OUT.wav): " + "; ".join(problems)
        )

    written: list[Path] = []
    for name, langs in prompts.items():
        for lang, path in langs.items():
            dest_dir = target / lang / SUBDIR
            dest_dir.mkdir(parents=True, exist_ok=True)
            dest = dest_dir / f"{name}.wav"
            _copy_atomic(path, dest)
            written.append(dest)
    return written
