"""``tvrbench inspect-data``: counts of a DiDeMo split — videos, sentences, missing and unreadable
videos, names without extension, paragraphs truncated at ``max_words`` — and its length buckets.

With ``--annotations-only`` no video file is needed (and the bucket table is empty); otherwise
every video is probed through the frame cache (decoded once, then read from the cache).

``--manifest FILE.csv`` also writes the dataset manifest (:mod:`tvrbench.data.manifest`): every
video of the train, val and test splits with its size, SHA-256 (of the first ``--hash-mb`` MiB
and the total size), decoded duration, frames sampled and status (ok / missing / unreadable).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tvrbench.data.annotations import SPLITS, AnnotationError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvrbench inspect-data", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="dataset root ({split}_data.json, lists)")
    p.add_argument("--split", choices=SPLITS, default="val")
    p.add_argument("--video-dir", default=None, help="video folder (default ROOT/videos)")
    p.add_argument("--annotations-only", action="store_true", help="do not read video files")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-words", type=int, default=32)
    p.add_argument("--tokenizer", default="tiny", help='"tiny", a folder or a cached hub id')
    p.add_argument("--bucket-by", choices=("duration", "sampled_span", "words"), default="duration")
    p.add_argument("--num-buckets", type=int, default=4)
    p.add_argument("--bucket-edges-s", type=float, nargs="+", default=None)
    p.add_argument("--sample-fps", type=float, default=1.0)
    p.add_argument("--max-frames", type=int, default=64)
    p.add_argument("--clip-seconds", type=float, default=31.0, help="<= 0 for the whole video")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--reader", choices=("auto", "decord", "pyav"), default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--workers", type=int, default=0, help="probe processes (0: all cores)")
    p.add_argument(
        "--manifest",
        default=None,
        help="write the dataset manifest of every split here (CSV: size, SHA-256 of the first "
        "--hash-mb MiB + total size, duration, frames sampled, status)",
    )
    p.add_argument("--hash-mb", type=float, default=1.0, help="MiB hashed per video file")
    return p


def inspect_annotations(args: argparse.Namespace) -> dict[str, Any]:
    """Counts from the annotation files alone."""
    from tvrbench.backbone import load_tokenizer
    from tvrbench.data.annotations import load_split
    from tvrbench.data.datamodule import count_truncated

    ann = load_split(args.root, args.split, annotations_only=True)
    tokenizer = load_tokenizer(args.tokenizer)
    return {
        "split": args.split,
        "videos": len(ann.videos),
        "sentences": ann.num_sentences,
        "missing_videos": None,
        "unreadable_videos": None,
        "names_without_extension": len(ann.names_without_extension),
        "unannotated_videos": len(ann.unannotated),
        "truncated_paragraphs": count_truncated(
            tokenizer, [v.paragraph for v in ann.videos], args.max_words
        ),
        "max_words": args.max_words,
        "buckets": [],
    }


def inspect_videos(args: argparse.Namespace) -> dict[str, Any]:
    """Counts and bucket table, probing every video (through the frame cache)."""
    from tvrbench.data.datamodule import DiDeMoDataModule

    dm = DiDeMoDataModule(
        root=args.root,
        video_dir=args.video_dir,
        tokenizer=args.tokenizer,
        max_words=args.max_words,
        max_frames=args.max_frames,
        sample_fps=args.sample_fps,
        clip_seconds=args.clip_seconds if args.clip_seconds > 0 else None,
        image_size=args.image_size,
        reader=args.reader,
        cache_dir=args.cache_dir,
        bucket_by=args.bucket_by,
        bucket_edges_s=args.bucket_edges_s,
        num_buckets=args.num_buckets,
        num_workers=args.workers,
        memory_limit_gb=0.0,
    )
    dm.setup_split(args.split)
    summary = dm.summary(args.split)
    summary["manifest"] = str(dm.manifest_path)
    return summary


def write_data_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """``--manifest``: build and write the manifest; returns its path, hash and status counts."""
    from tvrbench.data.datamodule import auto_num_workers
    from tvrbench.data.manifest import build_manifest, status_counts, write_manifest
    from tvrbench.data.video import SamplingConfig

    sampling = SamplingConfig(
        args.sample_fps,
        args.max_frames,
        args.clip_seconds if args.clip_seconds > 0 else None,
        args.image_size,
    )
    rows = build_manifest(
        args.root,
        args.video_dir,
        sampling,
        cache_dir=args.cache_dir,
        reader=args.reader,
        hash_mb=args.hash_mb,
        processes=args.workers or max(1, auto_num_workers()),
    )
    digest = write_manifest(rows, args.manifest)
    return {"path": str(args.manifest), "sha256": digest, "videos": status_counts(rows)}


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"split {s['split']}"]
    for key in (
        "videos",
        "sentences",
        "missing_videos",
        "unreadable_videos",
        "names_without_extension",
        "truncated_paragraphs",
    ):
        label = key.replace("_", " ")
        if key == "truncated_paragraphs":
            label += f" (max_words {s['max_words']})"
        lines.append(f"  {label:<36} {_fmt(s.get(key), 'd')}")
    if s.get("manifest"):
        lines.append(f"  bad/missing videos listed in {s['manifest']}")
    if s["buckets"]:
        lines.append(f"  {'bucket':<12}{'from':>8}{'to':>8}{'videos':>8}{'mean s':>9}{'frames':>8}")
        for b in s["buckets"]:
            lines.append(
                f"  {b['name']:<12}{_fmt(b['lower']):>8}{_fmt(b['upper']):>8}{b['videos']:>8}"
                f"{_fmt(b['mean_duration_s']):>9}{_fmt(b['mean_frames']):>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = inspect_annotations(args) if args.annotations_only else inspect_videos(args)
        if args.manifest:
            summary["dataset_manifest"] = write_data_manifest(args)
    except (AnnotationError, OSError, ValueError, RuntimeError) as err:
        print(f"tvrbench inspect-data: {err}".splitlines()[0], file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else format_summary(summary))
    if args.manifest and not args.json:
        m = summary["dataset_manifest"]
        counts = ", ".join(f"{n} {status}" for status, n in sorted(m["videos"].items()))
        print(f"manifest {m['path']}: {counts}; sha256 {m['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
