"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through ``dicomweb-client``: which series a study has, fetch one, store a result.

An input ``dicomweb://HOST:PORT/PATH?StudyInstanceUID=...`` names the service at ``http://HOST:PORT/PATH``
(``dicomwebs://`` for https). Query parameters: ``StudyInstanceUID`` and ``SeriesInstanceUID`` select; any other
(``Modality=CT``, ``PatientID=...``) is passed to the series search as a QIDO filter. Without a study, every
matching series on the server is a case. ``$DELIGHTSAM_DICOMWEB_TOKEN``, when set, is sent as a bearer token.
"""

from __future__ import annotations

import os
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
TIMEOUT_S = (10, 120)  # connecting; waiting for data


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
    client = dicomweb_client.DICOMwebClient(url, headers=headers, timeout=TIMEOUT_S)
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)  # ~3 s of retries
    return client


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
    found = _call(
        lambda: client.search_for_series(
            study_instance_uid=study, search_filters=query or None, fields=["Modality"], get_remaining=True
        ),
        url,
        "search for series",
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


def _value(item: dict, tag: str) -> Optional[str]:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _call(request, url: str, what: str):
    requests = require("requests", PURPOSE)
    try:
        return request()
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
