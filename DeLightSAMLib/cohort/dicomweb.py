"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through ``dicomweb-client``: which series a study has, fetch one, store a result.

An input ``dicomweb://HOST:PORT/PATH?StudyInstanceUID=...`` names the service at ``http://HOST:PORT/PATH``
(``dicomwebs://`` for https). Query parameters: ``StudyInstanceUID`` and ``SeriesInstanceUID`` select; any other
(``Modality=CT``, ``PatientID=...``) is passed to the series search as a QIDO filter. Without a study, every
matching series on the server is a case. ``$DELIGHTSAM_DICOMWEB_TOKEN``, when set, is sent as a bearer token.

A run never hangs on a server: a request that gets no answer within ``$DELIGHTSAM_DICOMWEB_TIMEOUT`` seconds (100 by
default) ends with one line, and a run then sends that server no further request; while it waits, one line says
what for. Searches page with ``offset`` and stop when a page brings nothing new, also where a server ignores
``offset`` and answers the same page again.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ..errors import DeLightSAMError
from .extras import require

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
TOKEN_ENV = "DELIGHTSAM_DICOMWEB_TOKEN"
# Series that hold results or documents, not images to segment (our own SEGs among them on a rerun).
NOT_IMAGES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "PR", "KO", "REG", "DOC", "PLAN"}
PURPOSE = "DICOMweb input and --store-to"
TIMEOUT_ENV = "DELIGHTSAM_DICOMWEB_TIMEOUT"
DEFAULT_TIMEOUT_S = 100.0  # waiting for an answer; with the connection's 10 s, under two minutes in all
CONNECT_TIMEOUT_S = 10.0
MAX_PAGES = 1000  # a search that still brings new series after this many pages is refused

logger = logging.getLogger(__name__)
# Servers that did not answer in this run: further requests fail at once with the same reason.
_SILENT: dict[str, str] = {}


class DicomwebError(DeLightSAMError):
    """A DICOMweb server that cannot be reached, or that refused a request."""


@dataclass(frozen=True)
class DicomwebSeries:
    """One series on a DICOMweb service (``url`` is the service's http(s) root)."""

    url: str
    study: str
    series: str
    modality: str = ""  # its Modality (0008,0060), as the server's search gave it

    def __str__(self) -> str:
        return f"{self.url} study {self.study} series {self.series}"


def is_dicomweb(text: str) -> bool:
    return str(text).split("://", 1)[0].lower() in SCHEMES and "://" in str(text)


def service_url(text: str) -> str:
    """The http(s) root of a ``dicomweb://`` or plain http(s) address, without query."""
    parts = urlsplit(str(text))
    scheme = SCHEMES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.netloc:
        raise DicomwebError(
            f"'{text}' is not a DICOMweb address; use dicomweb://HOST:PORT/PATH or http(s)://HOST:PORT/PATH"
        )
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def connect(url: str):
    dicomweb_client = require("dicomweb_client", PURPOSE)
    token = os.environ.get(TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = dicomweb_client.DICOMwebClient(url, headers=headers, timeout=(CONNECT_TIMEOUT_S, timeout_s()))
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)  # ~3 s of retries
    return client


def timeout_s() -> float:
    """Seconds a request waits for the server's answer (``$DELIGHTSAM_DICOMWEB_TIMEOUT``, default 100)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise DicomwebError(f"${TIMEOUT_ENV}={text} is not a number of seconds above 0")
    return value


def list_series(text: str) -> list[DicomwebSeries]:
    """The image series a ``dicomweb://`` input names, sorted by study and series UID (every process of a sharded
    run must see the same order)."""
    url = service_url(text)
    query = {key: values[-1] for key, values in parse_qs(urlsplit(text).query).items()}
    study = query.pop("StudyInstanceUID", None)
    series = query.pop("SeriesInstanceUID", None)
    if series and not study:
        raise DicomwebError(f"{text}: SeriesInstanceUID needs StudyInstanceUID too")
    client = connect(url)
    if series:
        query["SeriesInstanceUID"] = series
    found = _search_all(
        lambda offset: _call(
            lambda: client.search_for_series(
                study_instance_uid=study, search_filters=query or None, fields=["Modality"], offset=offset
            ),
            url,
            "search for series",
        ),
        url,
    )
    result = []
    for item in found:
        modality = _value(item, "00080060")
        if modality and modality.upper() in NOT_IMAGES:
            continue
        result.append(DicomwebSeries(url, _value(item, "0020000D") or study, _value(item, "0020000E"), modality or ""))
    if not result:
        raise DicomwebError(f"no image series found at {text}; check the StudyInstanceUID and filters")
    return sorted(result, key=lambda s: (s.study, s.series))


def retrieve(series: DicomwebSeries, folder: Path) -> list[Path]:
    """Fetch every instance of ``series`` into ``folder`` as DICOM files; their paths."""
    client = connect(series.url)
    datasets = _call(lambda: client.retrieve_series(series.study, series.series), series.url, f"retrieve {series}")
    if not datasets:
        raise DicomwebError(f"the server returned no instances for {series}")
    paths = []
    for number, dataset in enumerate(datasets):
        path = folder / f"{number:05d}.dcm"
        dataset.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def store(url: str, dataset) -> None:
    """STOW-RS one dataset to the service at ``url``."""
    client = connect(service_url(url))
    _call(lambda: client.store_instances([dataset]), url, "store the result")


def _search_all(search, url: str) -> list[dict]:
    """Every page of a search (``search(offset)`` returns one page): stop at an empty page or at one that brings no
    series not already seen (a server that ignores ``offset`` answers the same page again)."""
    found: dict[tuple, dict] = {}
    for _ in range(MAX_PAGES):
        page = search(len(found))
        new = {}
        for item in page or []:
            key = (_value(item, "0020000D"), _value(item, "0020000E"))
            if key not in found:
                new[key] = item
        if not new:
            return list(found.values())
        found.update(new)
    raise DicomwebError(
        f"DICOMweb server {url} still lists new series after {MAX_PAGES} pages ({len(found)} series); narrow the "
        "search with StudyInstanceUID or a filter such as Modality=CT"
    )


def _value(item: dict, tag: str) -> Optional[str]:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _call(request, url: str, what: str):
    requests = require("requests", PURPOSE)
    if url in _SILENT:
        raise DicomwebError(_SILENT[url])
    wait = timeout_s()
    notice = threading.Timer(
        min(5.0, wait / 4),
        lambda: logger.warning(
            "waiting for the DICOMweb server %s to %s (giving up after %.0f s without an answer)", url, what, wait
        ),
    )
    notice.daemon = True
    notice.start()
    try:
        return request()
    except requests.exceptions.Timeout as error:
        reason = (
            f"the DICOMweb server {url} did not answer within {wait:g} s (to {what}); check that it is running and "
            f"not overloaded, or wait longer with ${TIMEOUT_ENV}=SECONDS"
        )
        _SILENT[url] = reason
        raise DicomwebError(reason) from error
    except requests.exceptions.HTTPError as error:
        status = getattr(error.response, "status_code", "?")
        raise DicomwebError(
            f"DICOMweb server {url} refused to {what} (HTTP {status}); check the address, UIDs and permissions"
        ) from error
    except requests.exceptions.RequestException as error:
        raise DicomwebError(
            f"cannot reach the DICOMweb server {url} to {what} ({type(error).__name__}); check the "
            "address and that the server is running"
        ) from error
    finally:
        notice.cancel()
