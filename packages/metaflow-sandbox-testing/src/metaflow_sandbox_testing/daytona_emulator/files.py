"""The toolbox's bulk file endpoints, as the SDK uses them.

- `POST files/bulk-upload`: multipart with fields `files[i].path` (text) and `files[i].file` (bytes);
  parent directories are created; the answer is `{"files": [...], "errors": [...]}`.
- `POST files/bulk-download {"paths": [...]}`: a `multipart/form-data` answer with one part per path,
  `name="file"` with the bytes or `name="error"` with a JSON error envelope, each with `filename=<path>`
  exactly as requested, and the closing boundary.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.parse
import uuid

from aiohttp import BodyPartReader, web

from .envelope import SOURCE_DAEMON, EmulatorError, envelope
from .sandboxes import EmulatedSandbox

CHUNK = 256 * 1024
_FIELD = re.compile(r"^files\[(\d+)\]\.(path|file)$")


async def bulk_upload(request: web.Request, sandbox: EmulatedSandbox) -> web.Response:
    reader = await request.multipart()
    paths: dict[str, str] = {}
    staged: dict[str, tuple[str, int]] = {}  # index → (temporary file, size)
    done: list[dict[str, object]] = []
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise EmulatorError(400, "nested multipart is not supported", code="BAD_REQUEST")
            match = _FIELD.match(part.name or "")
            if match is None:
                await part.release()
                continue
            index, kind = match.groups()
            if kind == "path":
                paths[index] = await part.text()
                continue
            # Stage next to the sandbox (same file system), then move into place once the path is known.
            fd, temporary = tempfile.mkstemp(dir=sandbox.root, prefix=".upload-")
            size = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = await part.read_chunk(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    size += len(chunk)
            staged[index] = (temporary, size)
        for index, (temporary, size) in staged.items():
            if index not in paths:
                raise EmulatorError(400, f"files[{index}].path is missing", code="BAD_REQUEST")
            target = sandbox.resolve(paths[index])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(temporary, target)
            done.append({"path": paths[index], "bytes": size})
    except EmulatorError as error:
        body = envelope(error.status, error.message, code=error.code, source=SOURCE_DAEMON, path=request.path)
        return web.json_response({**body, "errors": [error.message], "files": done}, status=error.status)
    finally:
        for temporary, _ in staged.values():
            if os.path.exists(temporary):
                os.unlink(temporary)
    sandbox.touch()
    return web.json_response({"files": done, "errors": []})


def _disposition(name: str, path: str) -> str:
    if path.isascii() and not any(ch in path for ch in '\r\n"\\'):
        return f'form-data; name="{name}"; filename="{path}"'
    return f"form-data; name=\"{name}\"; filename*=utf-8''{urllib.parse.quote(path, safe='')}"


async def bulk_download(request: web.Request, sandbox: EmulatedSandbox) -> web.StreamResponse:
    try:
        body = await request.json()
        paths = body["paths"]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise EmulatorError(400, 'expected {"paths": [...]}', code="BAD_REQUEST", source=SOURCE_DAEMON)
    boundary = uuid.uuid4().hex
    response = web.StreamResponse(headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for path in paths:
        head = f"--{boundary}\r\n".encode()
        try:
            target = sandbox.resolve(path)
            if not os.path.isfile(target):
                raise EmulatorError(
                    404, f"file not found: {path}", code="FILE_NOT_FOUND", source=SOURCE_DAEMON
                )
            with open(target, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                await response.write(
                    head
                    + (
                        f"Content-Disposition: {_disposition('file', path)}\r\n"
                        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
                    ).encode()
                )
                while True:
                    chunk = source.read(CHUNK)
                    if not chunk:
                        break
                    await response.write(chunk)
                await response.write(b"\r\n")
        except (EmulatorError, OSError) as error:
            if isinstance(error, EmulatorError):
                status, message, code = error.status, error.message, error.code
            else:
                status, message, code = 500, f"cannot read {path}: {error}", "FILE_READ_FAILED"
            detail = json.dumps(envelope(status, message, code=code, source=SOURCE_DAEMON, path=request.path))
            await response.write(
                head
                + (
                    f"Content-Disposition: {_disposition('error', path)}\r\n"
                    f"Content-Type: application/json\r\n\r\n{detail}\r\n"
                ).encode()
            )
    await response.write(f"--{boundary}--\r\n".encode())
    await response.write_eof()
    sandbox.touch()
    return response
