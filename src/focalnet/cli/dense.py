"""`focalnet detect IMAGE... --checkpoint PATH` and `focalnet segment IMAGE... --checkpoint PATH`."""
from __future__ import annotations

import argparse

from . import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="draw a detector's boxes (and masks) on images; writes <name>.detect.png",
        description="Detect objects with a FocalNet detector saved by focalnet.dense (save_dense_checkpoint) and "
        "write each image with its boxes, labels, scores (and masks) as <name>.detect.png.",
    )
    p.add_argument("images", nargs="+", help="image files (any size, any mode Pillow reads)")
    p.add_argument("--checkpoint", required=True, help="a detection checkpoint written by focalnet.dense")
    p.add_argument("--output-dir", default=None, help="where to write the PNGs (default: beside each image)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this (default 0.5)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser(
        "segment",
        help="colour a segmenter's class map over images; writes <name>.segment.png",
        description="Segment images with a FocalNet UperNet saved by focalnet.dense (save_dense_checkpoint) and "
        "write the class map as a coloured overlay with a legend as <name>.segment.png.",
    )
    p.add_argument("images", nargs="+", help="image files (any size, any mode Pillow reads)")
    p.add_argument("--checkpoint", required=True, help="a segmentation checkpoint written by focalnet.dense")
    p.add_argument("--output-dir", default=None, help="where to write the PNGs (default: beside each image)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours (default 0.5)")
    p.add_argument("--max-side", type=int, default=None, help="resize larger images to this longer side for the network")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_segment)


def _report(results) -> None:
    for r in results:
        print(f"{r.image} -> {r.output}")
        for line in r.summary or ["(nothing found)"]:
            print(f"  {line}")


def cmd_detect(args: argparse.Namespace) -> int:
    from ..dense.predict import detect_files

    try:
        results = detect_files(
            args.checkpoint, args.images, output_dir=args.output_dir, score_threshold=args.score_threshold, force=args.force
        )
    except FileExistsError as e:
        raise UserError(str(e)) from None
    _report(results)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from ..dense.predict import segment_files

    if args.max_side is not None and args.max_side < 32:
        raise UserError(f"--max-side must be at least 32 pixels, got {args.max_side}")
    try:
        results = segment_files(
            args.checkpoint, args.images, output_dir=args.output_dir, alpha=args.alpha, max_side=args.max_side,
            force=args.force,
        )
    except FileExistsError as e:
        raise UserError(str(e)) from None
    _report(results)
    return 0
