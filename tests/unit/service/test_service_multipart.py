"""The one-file multipart shortcut (service/api/v1.py: `single_file_part`) agrees with the full parser.

Every body the shortcut accepts must give exactly the file Starlette's form parser gives for field
"image"; every other body must be left to that parser (None)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.api.v1 import single_file_part

CT = "multipart/form-data; boundary=XyZ"


def full_parser(body: bytes, content_type: str = CT) -> bytes | str | None:
    """What read_image's full path finds: the file's bytes, "error" or "not a file"."""

    async def main() -> bytes | str | None:
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
        request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception:  # noqa: BLE001  (any parse failure is the outcome under test)
            return "error"
        try:
            item = form.get("image")
            return await item.read() if isinstance(item, UploadFile) else "not a file"
        finally:
            await form.close()

    return asyncio.run(main())


def part(headers: list[bytes], data: bytes, boundary: bytes = b"XyZ") -> bytes:
    return b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + data


def close(boundary: bytes = b"XyZ") -> bytes:
    return b"\r\n--" + boundary + b"--\r\n"


IMAGE = b"\xff\xd8\xff\xe0 a jpeg \r\n--Xy not the end \r\n-- \x00\xff\r\n"
FILE = b'Content-Disposition: form-data; name="image"; filename="a.jpg"'
CASES = {
    "one file": part([FILE, b"Content-Type: image/jpeg"], IMAGE) + close(),
    "no trailing CRLF": part([FILE], IMAGE) + b"\r\n--XyZ--",
    "headers in any case, unquoted": part([b"content-disposition: form-data; name=image; filename=x"], IMAGE) + close(),
    "empty file": part([FILE], b"") + close(),
    "quoted boundary": part([FILE], IMAGE, b"a b") + close(b"a b"),
    "a field, not a file": part([b'Content-Disposition: form-data; name="image"'], b"abc") + close(),
    "another name": part([b'Content-Disposition: form-data; name="img"; filename="a"'], IMAGE) + close(),
    "two parts": part([FILE], IMAGE) + b"\r\n" + part([b'Content-Disposition: form-data; name="x"'], b"1") + close(),
    "two files": part([FILE], IMAGE) + b"\r\n" + part([FILE], b"2") + close(),
    "no name": part([b'Content-Disposition: form-data; filename="a"'], IMAGE) + close(),
    "no disposition": part([b"Content-Type: image/jpeg"], IMAGE) + close(),
    "two dispositions": part([FILE, b'Content-Disposition: form-data; name="x"'], IMAGE) + close(),
    "other header": part([FILE, b"X-Other: 1"], IMAGE) + close(),
    "bad header name": part([FILE, b"Bad Header: 1"], IMAGE) + close(),
    "folded header": part([FILE, b" folded"], IMAGE) + close(),
    "preamble": b"hello\r\n" + part([FILE], IMAGE) + close(),
    "epilogue": part([FILE], IMAGE) + close() + b"trailing words",
    "unterminated": part([FILE], IMAGE),
    "bare LF": part([FILE], IMAGE).replace(b"\r\n", b"\n") + b"\n--XyZ--\n",
    "wrong boundary": part([FILE], IMAGE, b"Other") + close(b"Other"),
    "empty": b"",
    "data holding the delimiter": part([FILE], b"a\r\n--XyZ- b") + close(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_shortcut_takes_only_bodies_the_full_parser_reads_the_same(name: str) -> None:
    body = CASES[name]
    content_type = 'multipart/form-data; boundary="a b"' if name == "quoted boundary" else CT
    fast, full = single_file_part(body, content_type), full_parser(body, content_type)
    if fast is not None:
        assert fast == full, name
    accepted = {"one file", "no trailing CRLF", "headers in any case, unquoted", "empty file", "quoted boundary"}
    assert (fast is not None) == (name in accepted), name


def test_a_charset_or_no_boundary_goes_to_the_full_parser() -> None:
    body = CASES["one file"]
    assert single_file_part(body, CT + "; charset=utf-16") is None
    assert single_file_part(body, "multipart/form-data") is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([FILE, b"Content-Type: image/png", b'Content-Disposition: form-data; name="x"',
                                 b"X: y", b""]), max_size=3),
       st.binary(max_size=40), st.sampled_from([b"", b"\r\n", b"--", b"\r\n--XyZ", b"\r\n--XyZ--", b"x"]),
       st.booleans())
def test_whatever_the_shortcut_accepts_the_full_parser_reads_the_same(headers, data, tail, closed) -> None:
    body = part(headers, data) + (close() if closed else b"") + tail
    fast = single_file_part(body, CT)
    if fast is not None:
        assert fast == full_parser(body)


def test_a_long_disposition_is_read_without_being_cached() -> None:
    from service.api.v1 import _CACHED_DISPOSITION_BYTES, _is_image_file_disposition

    filename = b"x" * (_CACHED_DISPOSITION_BYTES + 1)
    for name, accepted in ((b"image", True), (b"other", False)):
        body = part([b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"'],
                    IMAGE) + close()
        before = _is_image_file_disposition.cache_info().currsize
        for _ in range(2):
            fast = single_file_part(body, CT)
            assert (fast == full_parser(body, CT)) if accepted else fast is None
        assert _is_image_file_disposition.cache_info().currsize == before
