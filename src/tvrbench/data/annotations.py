"""DiDeMo annotations: the LocalizingMoments JSON files and the CLIP4Clip split lists (SPEC §3).

Layout of a dataset root (real DiDeMo and the synthetic generator alike)::

    ROOT/{train,val,test}_data.json   # list of {annotation_id, description, video, times,
                                      #          dl_link, num_segments}
    ROOT/{train,val,test}_list.txt    # one video name per line (the split)
    ROOT/videos/<video file>          # video_dir is configurable

Paragraph-to-video protocol: one text per video, all its descriptions joined with a single space
in file order. The per-description moment ``times`` (annotators' ``[start, end]`` pairs in
5-second chunks) are kept as well, see :attr:`VideoAnnotation.moments`.

Video names are not clean: extensions of many kinds, and some names end in a bare ``"."``.
:func:`match_video_files` matches a listed name to a file by exact file name first, then by stem,
where the stem only drops a *known* video extension (or a trailing bare dot) — names themselves
contain dots. Every listed video whose file cannot be found is reported in
:attr:`SplitAnnotations.missing`; none is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("annotation_id", "description", "video", "times", "dl_link", "num_segments")
VIDEO_EXTENSIONS = frozenset(
    {
        "mp4", "mov", "avi", "mpg", "mpeg", "m4v", "wmv", "3gp", "3g2", "mts", "m2ts", "mkv",
        "webm", "flv", "ogv", "ts", "vob", "asf",
    }
)  # fmt: skip

Times = tuple[tuple[float, float], ...]


class AnnotationError(ValueError):
    """A malformed annotation or list file (message: file, entry index, problem)."""


@dataclass(frozen=True)
class VideoAnnotation:
    """All annotations of one video.

    Attributes:
        video: the name as written in the annotation file and split list.
        sentences: its descriptions, in file order.
        times: per description, the annotators' ``(start, end)`` chunk pairs.
        path: the matched video file, or None (annotations-only mode).
    """

    video: str
    sentences: tuple[str, ...]
    times: tuple[Times, ...]
    path: Path | None = None

    @property
    def paragraph(self) -> str:
        """All descriptions joined with a single space, in file order."""
        return " ".join(self.sentences)

    @property
    def moments(self) -> list[tuple[str, Times]]:
        """``[(description, times), ...]`` in file order (for sentence-moment pairing)."""
        return list(zip(self.sentences, self.times))


@dataclass
class SplitAnnotations:
    """One split: the videos of the split list that have annotations (and a file, unless
    annotations-only), plus what was left out and why.

    Attributes:
        videos: kept videos, in split-list order.
        missing: listed (and annotated) video names whose file was not found.
        unannotated: listed names absent from the annotation file.
        names_without_extension: listed names with no known video extension (e.g. ending in ".").
    """

    split: str
    annotation_file: Path
    list_file: Path | None
    videos: list[VideoAnnotation]
    missing: list[str] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)
    names_without_extension: list[str] = field(default_factory=list)

    @property
    def num_sentences(self) -> int:
        return sum(len(v.sentences) for v in self.videos)


# ------------------------------------------------------------------------------------- names


def video_stem(name: str) -> str:
    """The name without a known video extension or a trailing bare dot; names containing other
    dots are left whole (``"a.b.mov"`` → ``"a.b"``, ``"x@N00_1."`` → ``"x@N00_1"``,
    ``"clip.v2"`` → ``"clip.v2"``)."""
    if name.endswith("."):
        return name[:-1]
    head, dot, ext = name.rpartition(".")
    if dot and head and ext.lower() in VIDEO_EXTENSIONS:
        return head
    return name


def has_video_extension(name: str) -> bool:
    """True when the name ends in a known video extension."""
    return video_stem(name) != name and not name.endswith(".")


def match_video_files(names: list[str], video_dir: Path) -> dict[str, Path]:
    """Map each name to a file of ``video_dir``: exact file name first, then the same stem.

    When several files share a stem, the one whose extension sorts first is taken (``.mp4``
    preferred), so that the choice is deterministic. Names without a match are absent.
    """
    files = [p for p in video_dir.iterdir() if p.is_file()] if video_dir.is_dir() else []
    by_name = {p.name: p for p in files}
    by_stem: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: (p.suffix.lower() != ".mp4", p.name)):
        by_stem.setdefault(video_stem(p.name), p)
    found: dict[str, Path] = {}
    for name in names:
        path = by_name.get(name) or by_stem.get(video_stem(name))
        if path is not None:
            found[name] = path
    return found


# ------------------------------------------------------------------------------------ parsing


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_entry(entry: object, index: int, path: Path) -> None:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise AnnotationError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in ("description", "video"):
        if not isinstance(entry[key], str):
            raise AnnotationError(
                f"{where}: {key!r} must be a string, got {type(entry[key]).__name__}"
            )
    if not entry["video"]:
        raise AnnotationError(f"{where}: 'video' is empty")
    times = entry["times"]
    if not isinstance(times, list) or not all(
        isinstance(t, list) and len(t) == 2 and all(_is_number(x) for x in t) for t in times
    ):
        raise AnnotationError(f"{where}: 'times' must be a list of [start, end] number pairs")


def load_annotation_file(path: str | Path) -> dict[str, VideoAnnotation]:
    """Parse one LocalizingMoments JSON file into ``{video name: VideoAnnotation}``.

    Videos appear in order of first occurrence; sentences in file order. Extra keys are
    ignored; a missing key, a wrong type or a non-list file raises :class:`AnnotationError`.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise AnnotationError(f"{path}: annotation file not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    sentences: dict[str, list[str]] = {}
    times: dict[str, list[Times]] = {}
    for i, entry in enumerate(data):
        _check_entry(entry, i, path)
        name = entry["video"]
        sentences.setdefault(name, []).append(entry["description"])
        times.setdefault(name, []).append(tuple((t[0], t[1]) for t in entry["times"]))
    return {
        name: VideoAnnotation(video=name, sentences=tuple(sents), times=tuple(times[name]))
        for name, sents in sentences.items()
    }


def load_split_list(path: str | Path) -> list[str]:
    """Video names of a split list, one per line (blank lines ignored, duplicates kept once)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise AnnotationError(f"{path}: split list not found") from err
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not a text file ({err})") from err
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def load_split(
    root: str | Path,
    split: str,
    video_dir: str | Path | None = None,
    annotations_only: bool = False,
) -> SplitAnnotations:
    """Annotations of one split, intersected with its split list, matched to video files.

    Args:
        root: dataset root (``{split}_data.json``, ``{split}_list.txt``, ``videos/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        video_dir: folder of the video files (default ``ROOT/videos``).
        annotations_only: do not look for video files (``path`` stays None, nothing missing).

    Without a ``{split}_list.txt`` every annotated video is used, in file order.
    """
    if split not in SPLITS:
        raise AnnotationError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    annotation_file = root / f"{split}_data.json"
    list_file: Path | None = root / f"{split}_list.txt"
    annotated = load_annotation_file(annotation_file)
    if list_file is not None and list_file.exists():
        names = load_split_list(list_file)
    else:
        list_file, names = None, list(annotated)
    unannotated = [n for n in names if n not in annotated]
    kept = [annotated[n] for n in names if n in annotated]
    result = SplitAnnotations(
        split=split,
        annotation_file=annotation_file,
        list_file=list_file,
        videos=kept,
        unannotated=unannotated,
        names_without_extension=[n for n in names if not has_video_extension(n)],
    )
    if annotations_only:
        return result
    folder = Path(video_dir) if video_dir is not None else root / "videos"
    found = match_video_files([v.video for v in kept], folder)
    result.missing = [v.video for v in kept if v.video not in found]
    result.videos = [
        VideoAnnotation(v.video, v.sentences, v.times, found[v.video])
        for v in kept
        if v.video in found
    ]
    return result
