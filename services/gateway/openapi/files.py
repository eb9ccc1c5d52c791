"""Uploads into the object store."""

from __future__ import annotations

from services.gateway.files import SandboxUpload, UploadedFile
from services.gateway.openapi.models import ErrorResponse
from services.gateway.openapi.registry import Operation

_FORM = {
    "multipart/form-data": {
        "type": "object",
        "properties": {
            "file": {"type": "string", "contentMediaType": "application/octet-stream"},
            "collection": {"type": "string"},
        },
        "required": ["file"],
    }
}
_ERRORS = {
    400: ("a bad name or form", ErrorResponse),
    403: ("another collection", ErrorResponse),
    413: ("past JETTY_MAX_UPLOAD_BYTES", ErrorResponse),
    503: ("object store unavailable", ErrorResponse),
}

OPERATIONS = [
    Operation(
        "post",
        "/api/v1/files/upload",
        "Upload one file (multipart `file`)",
        "files",
        description="Stored under `<collection>/uploads/<name>`; the answer's `path` is what "
        "`jetty.file_paths` names. Re-uploading a name replaces it.",
        request=_FORM,
        responses={200: ("the stored file", UploadedFile), **_ERRORS},
    ),
    Operation(
        "post",
        "/api/v1/sandbox/upload",
        "Upload files (repeatable multipart `files`)",
        "files",
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string"}}},
            }
        },
        responses={200: ("the stored files", SandboxUpload), **_ERRORS},
    ),
]
