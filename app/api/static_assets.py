"""Files served from a fixed allow-list (the upload page's, the API documentation's): one rule for both routes,
each of which keeps its own Content-Security-Policy and its own list.

An allow-list instead of a mounted folder: only the listed files can ever be served, whatever the path says (no
`..`, no other file of the folder), each with the media type the list gives it, never one guessed from its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

BASE_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # a script is never taken for a page, nor a page for a script
    "Referrer-Policy": "no-referrer",
}
"""The headers every served file gets besides its route's Content-Security-Policy."""


@dataclass(frozen=True)
class AllowListedFiles:
    """The files of `directory` that may be served: `media_types` maps each file name to its media type; `headers`
    go with every answer; `kind` names the files in the 404 (``no static file 'x.js'``)."""

    directory: Path
    media_types: Mapping[str, str]
    headers: Mapping[str, str]
    kind: str

    def media_type(self, name: str) -> str:
        """The media type of `name`; a 404 `HTTPException` (its JSON body from the app's handler) when it is not
        listed."""
        media_type = self.media_types.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail=f"no {self.kind} {name!r}")
        return media_type

    def file_response(self, name: str) -> FileResponse:
        """`name` from `directory`, with its media type and the headers; a 404 when it is not listed."""
        return FileResponse(self.directory / name, media_type=self.media_type(name), headers=dict(self.headers))
