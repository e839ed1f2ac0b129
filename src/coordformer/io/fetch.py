"""Download structures for a user's machine: PDB entries (mmCIF, from RCSB or a mirror) and
AlphaFold DB models (by UniProt accession). Optional: nothing else in coordformer needs a network,
and the tests run it against a local HTTP server.

``fetch(ids, out_dir)`` writes one file per id into ``out_dir`` (``1ABC.cif.gz``,
``AF-P12345-F1-model_vN.cif``), ready for ``coordformer prepare`` / ``embed``. Ids already present
are not fetched again, so an interrupted run resumes. A download is written through a temporary
file and kept only if it reads as a structure (``read_structure``); every id that fails (unknown
entry, HTTP error after retries, unreadable content) is listed with its reason in
``out_dir/fetch_failed.tsv`` and never stops the others.

This module must not import torch.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from coordformer.config import FETCH_RETRIES, FETCH_TIMEOUT_S, FETCH_WORKERS
from coordformer.errors import UsageError
from coordformer.io.files import GZIP_MAGIC, STRUCTURE_SUFFIXES

__all__ = ["PDB_URL", "AFDB_API", "FetchSummary", "parse_fetch_id", "fetch", "FAILED_FILE"]

#: RCSB's file server; ``{id}`` is the upper-case PDB id. Mirrors: PDBe
#: ``https://www.ebi.ac.uk/pdbe/entry-files/download/{id_lower}.cif`` (``{id_lower}`` also works).
PDB_URL = "https://files.rcsb.org/download/{id}.cif.gz"
#: AlphaFold DB's prediction API: answers a JSON list whose entries carry ``cifUrl``, so the model
#: version (v4, v6, ...) need not be known here.
AFDB_API = "https://alphafold.ebi.ac.uk/api/prediction/{accession}"
FAILED_FILE = "fetch_failed.tsv"
#: File endings a PDB download may keep, longest first so ".cif.gz" wins over ".gz"-less matches.
_SUFFIXES = tuple(sorted(STRUCTURE_SUFFIXES, key=len, reverse=True))

_PDB_ID = re.compile(r"^([0-9][A-Za-z0-9]{3})(?:[._:-][A-Za-z0-9]{1,4})?$")  # 1abc, 1ABC.A, 1abc_A
_AF_ID = re.compile(r"^AF-([A-Z0-9]{6,10})-F1(?:-model_v\d+)?$", re.IGNORECASE)
# UniProt accession format (uniprot.org/help/accession_numbers)
_UNIPROT = re.compile(
    r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})$", re.IGNORECASE
)
_USER_AGENT = "coordformer (https://github.com/; structure download)"


_ID_FORMS = (
    "neither a PDB id (1abc) nor a UniProt accession / AlphaFold DB id (P69905, AF-P69905-F1)"
)


def parse_fetch_id(token: str) -> tuple[str, str]:
    """("pdb", "1ABC") for a PDB id (a chain suffix such as 1abc_A is dropped: the whole entry is
    fetched, choose chains later with --chains); ("afdb", "P12345") for a UniProt accession or an
    AlphaFold DB id (AF-P12345-F1). Raises UsageError for anything else."""
    t = token.strip()
    m = _AF_ID.match(t)
    if m:
        return "afdb", m.group(1).upper()
    m = _PDB_ID.match(t)
    if m:
        return "pdb", m.group(1).upper()
    if _UNIPROT.match(t):
        return "afdb", t.upper()
    raise UsageError(f"{token!r} is {_ID_FORMS}")


def read_id_tokens(path: str | os.PathLike) -> list[str]:
    """The ids of an ``--ids`` file: one per line or separated by spaces / commas, ``#`` comments.
    A byte-order mark (UTF-8, or UTF-16 as Windows tools save "Unicode text") is dropped, so it
    cannot glue itself to the first id. Raises UsageError if the file cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"--ids {path}: cannot read it ({e.strerror or e})") from None
    text = (
        data.decode("utf-16")
        if data.startswith((b"\xff\xfe", b"\xfe\xff"))
        else data.decode("utf-8-sig", "replace")
    )
    tokens: list[str] = []
    for line in text.splitlines():
        tokens += line.split("#", 1)[0].replace(",", " ").split()
    return tokens


@dataclass
class FetchSummary:
    out_dir: str
    requested: int = 0
    downloaded: int = 0
    present: int = 0  # already in out_dir from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    files: list[str] = field(
        default_factory=list
    )  # every file for the ids that succeeded (new or present)
    elapsed_s: float = 0.0

    def format(self) -> str:
        lines = [
            f"fetched into {self.out_dir}: {self.downloaded} downloaded, "
            f"{self.present} already there, "
            f"{len(self.failed)} failed, of {self.requested} ids ({self.elapsed_s:.1f} s)"
        ]
        if self.failed:
            lines.append(
                f"  failed (see {Path(self.out_dir) / FAILED_FILE}): "
                + "; ".join(f"{i}: {r}" for i, r in self.failed[:3])
                + (" ..." if len(self.failed) > 3 else "")
            )
        return "\n".join(lines)


class _FetchError(Exception):
    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def _get(url: str, timeout: float, whole_file: bool = False) -> bytes:
    """The body at ``url``. ``whole_file``: a structure file, which a reply that says neither its
    length nor uses chunks (HTTP/1.0, ending when the connection closes) may bring cut short at a
    line end with nothing to tell: such a body must end as its format does (:func:`_ends_whole`),
    else it is retried."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            framed = (
                r.headers.get("Content-Length") is not None
                or "chunked" in str(r.headers.get("Transfer-Encoding", "")).lower()
            )
        if whole_file and not framed and not _ends_whole(body):
            raise _FetchError(
                f"the reply from {url} gave no length and the file does not end as a complete "
                "one (PDB END, mmCIF '#'): cut off in transfer?",
                retry=True,
            )
        return body
    except urllib.error.HTTPError as e:
        # 404/410: the entry does not exist (or is obsolete); 408, 429 and 5xx are worth another try
        retry = e.code in (408, 429) or e.code >= 500
        what = (
            "not found" if e.code in (404, 410) else "refused" if e.code < 500 else "server error"
        )
        raise _FetchError(f"{what} (HTTP {e.code}) at {url}", retry=retry) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _FetchError(f"cannot reach {url}: {reason}", retry=True) from None
    except (
        http.client.HTTPException
    ) as e:  # a transfer cut off part-way (IncompleteRead), a garbled reply
        raise _FetchError(f"broken reply from {url}: {type(e).__name__}", retry=True) from None


def _ends_whole(body: bytes) -> bool:
    """Whether a downloaded structure file ends as complete files of its format do: gzip (whose
    own trailer tells a cut), a PDB file's END record, an mmCIF file's closing '#' line."""
    if body[:2] == GZIP_MAGIC:
        return True
    tail = body[-4096:].rstrip().rsplit(b"\n", 1)[-1].strip()
    return tail.startswith(b"END") or tail == b"#"


def _with_retries(fn, retries: int, backoff: float):
    for attempt in range(retries + 1):
        try:
            return fn()
        except _FetchError as e:
            if not e.retry or attempt == retries:
                raise
            time.sleep(backoff * 2**attempt)


def _url(template: str, **kw) -> str:
    return template.format(**kw, id_lower=kw.get("id", "").lower())


def _existing(out: Path, kind: str, key: str) -> Path | None:
    if kind == "pdb":
        hits = [
            out / f"{key}{suffix}" for suffix in _SUFFIXES if (out / f"{key}{suffix}").is_file()
        ]
        return hits[0] if hits else None
    hits = list(out.glob(f"AF-{key}-F1*.cif*"))
    # several model versions from earlier runs: the newest (v10 after v9, not by name)
    return max(
        hits,
        key=lambda p: (
            int(m.group(1)) if (m := re.search(r"model_v(\d+)", p.name)) else -1,
            p.name,
        ),
        default=None,
    )


def _fetch_one(
    kind: str,
    key: str,
    out: Path,
    pdb_url: str,
    afdb_api: str,
    timeout: float,
    retries: int,
    backoff: float,
) -> tuple[Path, bool]:
    """(file, downloaded?) for one id; raises _FetchError with the reason."""
    from coordformer.io.chains import StructureReadError
    from coordformer.io.structures import read_structure

    found = _existing(out, kind, key)
    if found is not None:
        return found, False
    if kind == "pdb":
        url = _url(pdb_url, id=key)
        path = urllib.parse.urlparse(url).path.lower()
        # a mirror may serve PDB format: keep the file's own ending, which read_structure goes by
        name = key + next((suffix for suffix in _SUFFIXES if path.endswith(suffix)), ".cif")
    else:
        api = _url(afdb_api, accession=key)
        raw = _with_retries(lambda: _get(api, timeout), retries, backoff)
        try:
            entries = json.loads(raw)
            ours = [e for e in entries if str(e.get("entryId", "")).upper() == f"AF-{key}-F1"]
            url = str((ours or entries)[0]["cifUrl"])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise _FetchError(
                f"AlphaFold DB answered without a model file for {key} at {api}"
            ) from None
        name = Path(urllib.parse.urlparse(url).path).name or f"AF-{key}-F1.cif"
        if not name.upper().startswith(f"AF-{key}-F1"):  # keep the resume check (_existing) valid
            name = f"AF-{key}-F1-{name}"
    data = _with_retries(lambda: _get(url, timeout, whole_file=True), retries, backoff)
    # hidden while incomplete, and ending like the final name (read_structure goes by the suffix)
    tmp = out / f".part-{os.getpid()}-{threading.get_ident()}-{name}"
    try:
        tmp.write_bytes(data)
        try:
            read_structure(tmp)
        except StructureReadError as e:
            raise _FetchError(
                f"downloaded {url} but it is not a usable structure: {e.reason}"
            ) from None
        final = out / name
        os.replace(tmp, final)
        return final, True
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    ids: Iterable[str],
    out_dir: str | os.PathLike,
    pdb_url: str = PDB_URL,
    afdb_api: str = AFDB_API,
    workers: int = FETCH_WORKERS,
    timeout: float = FETCH_TIMEOUT_S,
    retries: int = FETCH_RETRIES,
    backoff: float = 1.0,
    progress: bool = True,
) -> FetchSummary:
    """Download every id of ``ids`` (PDB ids, UniProt accessions, AlphaFold DB ids; see
    :func:`parse_fetch_id`) into ``out_dir``; returns a summary. A malformed id is not fetched but
    listed with the reason among the failures (``fetch_failed.tsv``), like an id that fails to
    download; only when no id is well-formed is it a UsageError. Duplicates are fetched once."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..progress import Progress  # plain periodic lines when the output is not a terminal

    t0 = time.monotonic()
    parsed: dict[tuple[str, str], str] = {}
    malformed: dict[str, str] = {}
    first_error: UsageError | None = None
    for token in ids:
        try:
            parsed.setdefault(parse_fetch_id(token), token)
        except UsageError as e:  # skipped and listed with the failures; the others go on
            first_error = first_error or e
            malformed.setdefault(token, f"malformed id: {_ID_FORMS}")
    if not parsed:
        raise first_error or UsageError(
            "no ids to fetch: give PDB ids or UniProt accessions, or --ids FILE"
        )
    for template, needed in ((pdb_url, "{id"), (afdb_api, "{accession")):
        if needed not in template:
            raise UsageError(f"URL template {template!r} lacks {needed}}}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = FetchSummary(
        out_dir=str(out), requested=len(parsed) + len(malformed), failed=list(malformed.items())
    )
    with Progress(
        TextColumn("[bold]fetching"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ids"),
        TextColumn("failed [yellow]{task.fields[failed]}[/]"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        # malformed ids count as done (and failed) from the start, so the counts add up
        task = bar.add_task(
            "fetch", total=summary.requested, completed=len(malformed), failed=len(summary.failed)
        )
        pool = ThreadPoolExecutor(max_workers=max(1, int(workers)))
        try:
            futures = {
                pool.submit(
                    _fetch_one, kind, key, out, pdb_url, afdb_api, timeout, retries, backoff
                ): token
                for (kind, key), token in parsed.items()
            }
            for fut in as_completed(futures):
                token = futures[fut]
                try:
                    path, new = fut.result()
                    summary.files.append(str(path))
                    summary.downloaded += new
                    summary.present += not new
                except _FetchError as e:
                    summary.failed.append((token, e.reason))
                except Exception as e:  # noqa: BLE001 - one odd id never stops the others
                    summary.failed.append((token, f"unexpected {type(e).__name__}: {e}"))
                bar.update(task, advance=1, failed=len(summary.failed))
        except BaseException:
            # Ctrl-C: drop the queued ids instead of downloading them all first (what `with` would
            # do); files already written are complete, so a re-run resumes from them
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    summary.files.sort()
    summary.failed.sort()
    failed_path = out / FAILED_FILE
    if summary.failed:
        tmp = failed_path.with_name(f".{FAILED_FILE}.{os.getpid()}.tmp")
        tmp.write_text(
            "id\treason\n" + "".join(f"{i}\t{' '.join(r.split())}\n" for i, r in summary.failed)
        )
        os.replace(tmp, failed_path)
    else:
        failed_path.unlink(missing_ok=True)  # a resumed run that now has everything
    summary.elapsed_s = time.monotonic() - t0
    return summary
