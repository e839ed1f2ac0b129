"""`coordformer fetch` against a local HTTP server standing in for RCSB and AlphaFold DB (no
network is used): downloads, retries, failures logged without stopping the rest, resume, and the
files go straight into `prepare`."""

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import DATA
from coordformer.cli import main
from coordformer.errors import UsageError
from coordformer.io import read_structure
from coordformer.io.fetch import FAILED_FILE, fetch, parse_fetch_id


class _Server:
    """Serves /download/<ID>.cif.gz (RCSB layout), /api/prediction/<ACC> (AlphaFold DB API) and
    /files/<name>; records every request path. ``flaky`` paths answer 503 once, then normally."""

    def __init__(self):
        self.requests: list[str] = []
        self.flaky: set[str] = set()
        self.truncate: set[str] = set()  # paths whose next reply stops after 100 bytes
        # path -> replies left that give no length (HTTP/1.0: the body ends when the connection
        # closes) and stop at a line end half-way
        self.unframed_cut: dict[str, int] = {}
        files = {
            "/download/1A8O.cif.gz": gzip.compress((DATA / "1A8O.cif").read_bytes()),
            "/download/5I55.cif.gz": gzip.compress((DATA / "5i55.cif").read_bytes()),
            "/download/2BAD.cif.gz": gzip.compress(b"<html>maintenance</html>\n"),
            "/pdb/1orc.pdb": (DATA / "1orc.pdb").read_bytes(),  # a mirror serving PDB format
            "/files/AF-P69905-F1-model_v9.cif": (DATA / "3JQH.cif").read_bytes(),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                if self.path in server.flaky:
                    server.flaky.discard(self.path)
                    return self._send(503, b"busy")
                if self.path == "/api/prediction/P69905":
                    body = json.dumps(
                        [
                            {
                                "entryId": "AF-P69905-F1",
                                "cifUrl": f"{server.base}/files/AF-P69905-F1-model_v9.cif",
                            }
                        ]
                    )
                    return self._send(200, body.encode())
                if self.path == "/api/prediction/Q9XYZ1":
                    return self._send(200, b"[]")
                if self.path in files and self.path in server.truncate:
                    server.truncate.discard(self.path)
                    body = files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(
                        body[:100]
                    )  # connection closes: the client sees IncompleteRead
                    self.close_connection = True
                    return
                if self.path in files and server.unframed_cut.get(self.path):
                    server.unframed_cut[self.path] -= 1
                    body = files[self.path]
                    self.send_response(200)
                    self.end_headers()  # no Content-Length
                    self.wfile.write(body[: body.index(b"\n", len(body) // 2) + 1])
                    self.close_connection = True
                    return
                if self.path in files:
                    return self._send(200, files[self.path])
                self._send(404, b"not found")

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def urls(self) -> dict:
        return {
            "pdb_url": self.base + "/download/{id}.cif.gz",
            "afdb_api": self.base + "/api/prediction/{accession}",
        }


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_parse_fetch_id():
    assert parse_fetch_id("1a8o") == ("pdb", "1A8O")
    assert parse_fetch_id("1A8O_A") == ("pdb", "1A8O") and parse_fetch_id("1a8o.B") == (
        "pdb",
        "1A8O",
    )
    assert parse_fetch_id("P69905") == ("afdb", "P69905")
    assert parse_fetch_id("af-p69905-f1") == ("afdb", "P69905")
    assert parse_fetch_id("A0A023GPI8") == ("afdb", "A0A023GPI8")
    for bad in ("", "hello", "12345", "AF-P69905-F2", "1a8o/A"):
        with pytest.raises(UsageError):
            parse_fetch_id(bad)


def test_fetch_downloads_checks_logs_and_resumes(server, tmp_path):
    out = tmp_path / "structures"
    server.flaky.add("/download/5I55.cif.gz")  # one 503 first: retried
    server.truncate.add("/download/1A8O.cif.gz")  # one transfer cut off part-way: retried
    ids = ["1a8o", "5I55_A", "P69905", "9zzz", "2bad", "Q9XYZ1", "1A8O.A"]
    s = fetch(ids, out, **server.urls(), backoff=0.01, progress=False)
    assert s.requested == 6 and s.downloaded == 3 and s.present == 0
    assert sorted(p.split("/")[-1] for p in s.files) == [
        "1A8O.cif.gz",
        "5I55.cif.gz",
        "AF-P69905-F1-model_v9.cif",
    ]
    reasons = dict(s.failed)
    assert "not found (HTTP 404)" in reasons["9zzz"]
    assert "not a usable structure" in reasons["2bad"]
    assert "without a model file" in reasons["Q9XYZ1"]
    assert (
        server.requests.count("/download/5I55.cif.gz") == 2
        and server.requests.count("/download/1A8O.cif.gz") == 2
    )
    assert server.requests.count("/download/9ZZZ.cif.gz") == 1  # a 404 is not retried
    rows = (out / FAILED_FILE).read_text().splitlines()
    assert rows[0] == "id\treason" and len(rows) == 4
    assert not list(out.glob(".part*"))  # the rejected download left nothing behind
    # the files are what the servers hold, read as structures
    assert (
        read_structure(out / "1A8O.cif.gz")[0].sequence
        == read_structure(DATA / "1A8O.cif")[0].sequence
    )
    # resume: nothing present is fetched again
    n = len(server.requests)
    s2 = fetch(["1a8o", "5i55", "AF-P69905-F1"], out, **server.urls(), progress=False)
    assert (s2.downloaded, s2.present, s2.failed) == (0, 3, []) and len(server.requests) == n
    assert not (out / FAILED_FILE).exists()  # this run had no failures
    # a mirror's template ({id_lower}, PDB format): the file keeps its own ending and reads as PDB
    s3 = fetch(["1ORC"], out, pdb_url=server.base + "/pdb/{id_lower}.pdb", progress=False)
    assert s3.downloaded == 1 and s3.files[0].endswith("1ORC.pdb")
    assert read_structure(s3.files[0])[0].sequence == read_structure(DATA / "1orc.pdb")[0].sequence


def test_a_reply_without_length_cut_at_a_line_end_is_retried_not_kept(server, tmp_path):
    """Such a file read as a valid structure (half its residues), was kept as downloaded, and every
    later run counted it as present."""
    url = server.base + "/pdb/{id_lower}.pdb"
    server.unframed_cut["/pdb/1orc.pdb"] = 1  # cut once, then whole
    s = fetch(["1ORC"], tmp_path / "a", pdb_url=url, backoff=0.01, progress=False)
    assert s.downloaded == 1 and server.requests.count("/pdb/1orc.pdb") == 2
    assert len(read_structure(s.files[0])[0].sequence) == 64
    server.unframed_cut["/pdb/1orc.pdb"] = 10  # always cut: a failure, logged, nothing kept
    s = fetch(["1ORC"], tmp_path / "b", pdb_url=url, retries=2, backoff=0.01, progress=False)
    assert s.downloaded == 0 and "cut off in transfer" in dict(s.failed)["1ORC"]
    assert not list((tmp_path / "b").glob("*.pdb")) and not list((tmp_path / "b").glob(".part*"))


def test_fetch_cli_then_prepare(server, tmp_path, capsys):
    out = tmp_path / "structures"
    (tmp_path / "ids.txt").write_text("# my set\n1A8O, P69905\n9zzz  # withdrawn\n")
    urls = server.urls()
    assert (
        main(
            [
                "fetch",
                "--ids",
                str(tmp_path / "ids.txt"),
                "5i55",
                "--out",
                str(out),
                "--quiet",
                "--pdb-url",
                urls["pdb_url"],
                "--afdb-api",
                urls["afdb_api"],
                "--retries",
                "0",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "3 downloaded, 0 already there, 1 failed, of 4 ids" in text and "9zzz" in text
    assert (
        main(["prepare", str(out), "--out", str(tmp_path / "ds"), "--quiet", "--min-length", "1"])
        == 0
    )
    assert "chains read: 3; kept: 3" in capsys.readouterr().out
    # a malformed id is skipped and listed with the failures; the others go on (it stopped the run)
    assert (
        main(
            [
                "fetch",
                "1a8o",
                "not-an-id",
                "--out",
                str(out),
                "--pdb-url",
                urls["pdb_url"],
                "--afdb-api",
                urls["afdb_api"],
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "0 downloaded, 1 already there, 1 failed, of 2 ids" in text
    # the progress line (plain: the output is not a terminal) counts the malformed id too
    assert "fetch: 2/2 (100%)" in text and "failed 1" in text
    assert (
        (out / FAILED_FILE)
        .read_text()
        .splitlines()[1]
        .startswith("not-an-id\tmalformed id: neither a PDB id")
    )
    # misuse (no well-formed id at all): one line, before any request
    n = len(server.requests)
    assert main(["fetch", "not-an-id", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error:")
        and "not-an-id" in err
        and "\n" not in err
        and len(server.requests) == n
    )
    assert main(["fetch", "--out", str(out)]) == 2
    assert "no ids" in capsys.readouterr().err
    assert main(["fetch", "1a8o", "--out", str(out), "--pdb-url", "http://127.0.0.1/x.cif"]) == 2
    assert "lacks {id}" in capsys.readouterr().err
    # an --ids file with a byte-order mark (UTF-8, or UTF-16 from Windows tools): the first id stays
    # an id
    for name, data in (
        ("bom8.txt", "\ufeff5i55\n".encode("utf-8")),
        ("bom16.txt", "\ufeff5i55\r\n".encode("utf-16-le")),
    ):
        (tmp_path / name).write_bytes(data)
        assert (
            main(
                [
                    "fetch",
                    "--ids",
                    str(tmp_path / name),
                    "--out",
                    str(out),
                    "--quiet",
                    "--pdb-url",
                    urls["pdb_url"],
                ]
            )
            == 0
        )
        assert "1 already there, 0 failed, of 1 ids" in capsys.readouterr().out
    # nothing fetched at all: exit status 1
    assert (
        main(
            [
                "fetch",
                "8zzz",
                "--out",
                str(tmp_path / "o2"),
                "--quiet",
                "--pdb-url",
                urls["pdb_url"],
            ]
        )
        == 1
    )
