"""Parallel range fetch of an image from several holders: real HTTP servers on free ports.

The holders here are small stdlib servers answering the holder endpoint's contract (206 with
Content-Range, image offsets); some send damaged bytes, cut a range short, or are not there.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.server import free_port
from shared import imagefile
from shared.errors import Unavailable
from shared.modelstore import TensorEntry, TensorTable
from shared.rangefetch import Holder, ImageLayout, RangeFetch

CHUNK = 64 << 10
NBYTES = 21 * CHUNK + 123  # the last chunk is short


class _Holder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: bytes, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.data, self.mode, self.ranges = data, mode, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real holders

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv: _Holder = self.server  # type: ignore[assignment]
        assert self.headers["x-token"] == "t", "the fetch sends the caller's headers"
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        srv.ranges += 1
        if srv.mode == "error":
            self.send_response(500)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"oops")
            return
        body = bytearray(srv.data[first : last + 1])
        if srv.mode == "corrupt":
            body[len(body) // 2] ^= 0xFF
        self.send_response(206)
        self.send_header("content-range", f"bytes {first}-{last}/{len(srv.data)}")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if srv.mode == "short":
            self.wfile.write(body[: len(body) // 3])
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def image(tmp_path: Path) -> tuple[bytes, ImageLayout]:
    data = os.urandom(NBYTES)
    table = TensorTable((TensorEntry("w", "uint8", (NBYTES,), 0, NBYTES),), NBYTES)
    path = imagefile.write(tmp_path / "m.img", "m@1", table, data, chunk_bytes=CHUNK)
    info = imagefile.read_info(path)
    return data, ImageLayout("m@1", info.nbytes, info.chunk_bytes, info.checksums)


@pytest.fixture
def holders(image: tuple[bytes, ImageLayout]) -> Iterator[dict[str, _Holder]]:
    data = image[0]
    servers = {mode: _Holder(data, mode) for mode in ("good", "good2", "corrupt", "short", "error")}
    for s in servers.values():
        s.mode = s.mode.rstrip("2")
        threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True).start()
    yield servers
    for s in servers.values():
        s.shutdown()
        s.server_close()


def _fetch(layout: ImageLayout, holders: list[Holder], seen: list[int] | None = None) -> tuple[RangeFetch, bytearray]:
    dest = bytearray(layout.nbytes)
    on_progress = None if seen is None else seen.append
    return RangeFetch(layout, holders, dest, {"x-token": "t"}, on_progress=on_progress, range_chunks=2), dest


def test_two_holders_share_the_ranges_and_the_bytes_are_exact(image, holders) -> None:
    data, layout = image
    progress: list[int] = []
    fetch, dest = _fetch(layout, [Holder("a", holders["good"].url), Holder("b", holders["good2"].url)], progress)
    report = fetch.run()
    assert bytes(dest) == data
    assert report.bytes_from["a"] > 0 and report.bytes_from["b"] > 0
    assert sum(report.bytes_from.values()) == NBYTES and not report.failures and report.retried == 0
    assert sorted(progress) == sorted(set(progress)) and max(progress) == NBYTES and fetch.ready == NBYTES


def test_a_holder_sending_damaged_bytes_is_dropped_and_its_range_fetched_elsewhere(image, holders) -> None:
    data, layout = image
    seen: list[bool] = []
    fetch, dest = _fetch(layout, [Holder("bad", holders["corrupt"].url), Holder("a", holders["good"].url)])
    # Whatever is reported ready is already exact: nothing unverified is ever let through.
    fetch.on_progress = lambda ready: seen.append(bytes(dest[:ready]) == data[:ready])
    report = fetch.run()
    assert bytes(dest) == data and seen and all(seen)
    assert "checksum" in report.failures["bad"] and report.bytes_from["bad"] == 0
    assert report.retried == 1 and holders["corrupt"].ranges == 1  # dropped after its first range
    assert report.bytes_from["a"] == NBYTES


@pytest.mark.parametrize("mode", ["short", "error"])
def test_a_cut_short_or_failing_holder_is_retried_elsewhere(image, holders, mode) -> None:
    data, layout = image
    fetch, dest = _fetch(layout, [Holder("x", holders[mode].url), Holder("a", holders["good"].url)])
    report = fetch.run()
    assert bytes(dest) == data and "x" in report.failures and report.retried == 1


def test_an_unreachable_holder_is_worked_around(image, holders) -> None:
    data, layout = image
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fetch, dest = _fetch(layout, [Holder("gone", gone), Holder("a", holders["good"].url)])
    report = fetch.run()
    assert bytes(dest) == data and "gone" in report.failures and report.bytes_from["a"] == NBYTES


def test_no_holder_left_is_a_clear_error_naming_each(image, holders) -> None:
    _, layout = image
    fetch, _ = _fetch(layout, [Holder("bad", holders["corrupt"].url), Holder("err", holders["error"].url)])
    with pytest.raises(Unavailable) as err:
        fetch.run()
    msg = err.value.message
    assert "could not be fetched from any holder" in msg and "bad: " in msg and "err: " in msg and "HTTP 500" in msg


def test_bad_arguments_are_refused(image) -> None:
    _, layout = image
    with pytest.raises(ValueError, match="at least one holder"):
        RangeFetch(layout, [], bytearray(NBYTES), {})
    with pytest.raises(ValueError, match="destination"):
        RangeFetch(layout, [Holder("a", "http://127.0.0.1:1")], bytearray(10), {})
    with pytest.raises(ValueError, match="checksums"):
        ImageLayout("m@1", NBYTES, CHUNK, (1, 2))
