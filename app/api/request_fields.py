"""What a route takes, held to: a query parameter or a form field a route does not take is refused, not ignored.

Why: a misspelt parameter (`mask_fromat=png`) would be ignored and the request answered with the defaults; of
`output=json&output=dicom-seg` only the last would count; a file sent as `file` to the batch, or a second file
beside `file`, would be dropped without a word: each an answer to a question not asked.
"""

from __future__ import annotations

from fastapi import Depends, Request, params

from app.errors import RequestValidationFailed

SHOWN_NAME_CHARACTERS = 40


def shown_name(name: str) -> str:
    """A client's field name as an error message quotes it: cut to `SHOWN_NAME_CHARACTERS`."""
    return name if len(name) <= SHOWN_NAME_CHARACTERS else f"{name[:SHOWN_NAME_CHARACTERS]}..."


def query_parameters(*known: str) -> params.Depends:
    """A route dependency that refuses a query parameter the route does not take, or one given more than once."""

    async def refuse_others(request: Request) -> None:
        for name in dict.fromkeys(request.query_params.keys()):
            if name not in known:
                taken = ", ".join(known) if known else "no query parameters"
                raise RequestValidationFailed(
                    f"query.{shown_name(name)}: not a parameter of this endpoint (it takes {taken})"
                )
            if (count := len(request.query_params.getlist(name))) > 1:
                raise RequestValidationFailed(f"query.{name}: given {count} times; give it once")

    return Depends(refuse_others)


async def check_file_fields(request: Request, field: str, several: bool = False) -> None:
    """Refuse a form part named other than `field`, and, unless `several`, more than one `field` part (FastAPI would
    take the last, answering for a slice the client may not have meant)."""
    form = await request.form()
    for name in dict.fromkeys(form.keys()):
        if name != field:
            raise RequestValidationFailed(f"body.{shown_name(name)}: not a field of this endpoint (it takes `{field}`)")
    count = len(form.getlist(field))
    if count > 1 and not several:
        raise RequestValidationFailed(
            f"body.{field}: expected one file, got {count} (send several slices to /v1/predict/batch as `files`)"
        )
