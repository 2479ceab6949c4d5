"""Request models of the two classify endpoints: multipart file fields plus `top_k`.

BentoML treats a text value in a file field as a URL to download (a 500 when it is not one, and
a server-side fetch when it is); these models refuse anything but an uploaded file, as a 400.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Optional

import bentoml
from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from service.schemas import TOP_K_MAX
from service.settings import service_settings

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
TopK = Annotated[int, Field(ge=1, le=TOP_K_MAX, description="how many of the best classes to return")]
ModelName = Annotated[
    Optional[str], Field(max_length=63, description="a served model's store name (default: the first served)")
]
MAX_FILES = service_settings().max_batch_files
# Parts beyond the image files that the form parser accepts before it refuses the body (Starlette
# allows 1000 files and 1000 fields); the models then name what is wrong with the rest.
EXTRA_PARTS = 16


class UploadInput(bentoml.IODescriptor):
    """Checks that every file field holds uploaded files before BentoML's own parsing."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Any:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type in FORM_TYPES:
            try:  # Starlette caches the form: BentoML's parser reuses this parse (and these limits)
                form = await request.form(max_files=MAX_FILES + EXTRA_PARTS, max_fields=EXTRA_PARTS)
            except (HTTPException, MultiPartException) as exc:  # BentoML would answer these with a 500
                detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
                problem = PydanticCustomError("multipart", "invalid multipart body: {detail}", {"detail": detail})
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type=problem, loc=(), input="")]
                ) from None
            errors = [
                InitErrorDetails(type=PydanticCustomError("form_field", problem), loc=(name,), input="")
                for name in dict.fromkeys(form.keys())
                if (problem := cls._field_problem(name, form.getlist(name)))
            ]
            if errors:  # report a missing file field too, not only the stray one
                errors[:0] = [
                    InitErrorDetails(type=PydanticCustomError("missing", "Field required"), loc=(name,), input="")
                    for name in cls.multipart_fields
                    if name not in form and cls.model_fields[name].is_required()
                ]
                raise ValidationError.from_exception_data(cls.__name__, errors)
        return await super().from_http_request(request, serde)

    @classmethod
    def _field_problem(cls, name: str, values: list[Any]) -> str | None:
        """Why a form field cannot be parsed (BentoML would 500 on a file in a text field)."""
        is_file = [isinstance(value, UploadFile) for value in values]
        if name in cls.multipart_fields:
            return None if all(is_file) else "expected an uploaded file, got a text value"
        if name in cls.model_fields:
            return "expected a text value, got a file" if any(is_file) else None
        if any(is_file):
            files = ", ".join(repr(f) for f in cls.multipart_fields)
            return f"unexpected file field (send images as {files})"
        return None


class ClassifyInput(UploadInput):
    image: Annotated[Path, Field(description="the image file (PNG, JPEG, GIF, BMP, WebP, TIFF); any Content-Type")]
    top_k: TopK = 3
    model: ModelName = None


class ClassifyBatchInput(UploadInput):
    images: Annotated[
        list[Path],
        Field(min_length=1, max_length=MAX_FILES, description="image files (repeat the field); answered in order"),
    ]
    top_k: TopK = 3
    model: ModelName = None


async def read_files(paths: list[Path]) -> list[bytes]:
    """Uploaded files (BentoML's temporary copies) read in a thread: the event loop stays free."""
    return await asyncio.to_thread(lambda: [Path(path).read_bytes() for path in paths])
