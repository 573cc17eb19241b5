"""``delightsam download`` and ``delightsam info``: checkpoints into the cache, and what is where."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from .. import __version__
from ..errors import DeLightSAMError
from ..registry import CHECKPOINTS, OFFICIAL_CHECKPOINT


def add_parsers(commands) -> None:
    download = commands.add_parser("download", help="download a checkpoint into the cache (or --to DIR)")
    download.add_argument(
        "--checkpoint",
        "-c",
        default=OFFICIAL_CHECKPOINT,
        help=f"registry name ({', '.join(CHECKPOINTS)}), URL, gdrive:ID or path",
    )
    download.add_argument("--to", default=None, help="destination folder (default: the cache folder)")
    download.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="URL|PATH",
        help="for a registry checkpoint: take the file from here instead (still SHA-256 verified)",
    )
    download.set_defaults(handler=run_download)

    info = commands.add_parser("info", help="show checkpoints, cache folder, device and modality map")
    info.set_defaults(handler=run_info)


def run_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..checkpoint import download_checkpoint

    if args.source and args.checkpoint not in CHECKPOINTS:
        raise DeLightSAMError(f"--from needs a registry checkpoint name ({', '.join(CHECKPOINTS)}) as --checkpoint")
    origins: list[str] = []
    start = time.perf_counter()
    # A live bar on a terminal (cleared when the download fails, so that the error stays one line); where stderr is
    # not a terminal (a log), the line after the download says how much came from where. stdout: the path alone.
    bar = tqdm(
        unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stderr, disable=not _is_terminal()
    )

    def progress(done: int, total: Optional[int]) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        path = download_checkpoint(
            args.checkpoint,
            args.to,
            progress=progress,
            urls=[args.source] if args.source else None,
            on_origin=origins.append,
        )
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    print(
        f"delightsam: {path.name}: {path.stat().st_size / 1e6:.1f} MB in {seconds:.1f} s from {origins[-1]}",
        file=sys.stderr,
    )
    print(path)
    return 0


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def run_info(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import cache_dir, checkpoint_origin
    from ..device import select_device
    from ..registry import modality_name

    print(f"DeLightSAMLib {__version__}, torch {torch.__version__}")
    print(f"cache folder: {cache_dir()}")
    print(f"device (auto): {select_device('auto')}")
    for entry in CHECKPOINTS.values():
        path, origin = checkpoint_origin(entry.name)
        state = f"{path}, {path.stat().st_size / 1e6:.1f} MB, {origin}" if path is not None else origin
        print(f"checkpoint {entry.name}: {entry.description} [{state}]")
        print(f"  file {entry.filename}; sha256 {entry.sha256 or 'not published'}; sources {', '.join(entry.urls)}")
        for index in sorted(entry.modality_map.values()):
            print(f"  modality {index}: {modality_name(index, entry.modality_map)}")
    return 0
