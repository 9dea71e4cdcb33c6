"""Items: add by image or by precomputed codes, read, delete, thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import EngineDep, SettingsDep, WriteAccess
from service.errors import ApiError
from service.routers.common import error_responses, read_images
from service.schemas import AddResponse, DeleteResponse, ItemResponse
from service.uploads import (
    MAX_ID,
    check_code_upload,
    labels_metadata,
    load_npy,
    parse_ids,
    parse_metadata,
    read_capped,
)

router = APIRouter(prefix="/v1/items", tags=["items"])
#: Bulk code uploads get their own body limit (see create_app).
codes_router = APIRouter(prefix="/v1/items", tags=["items"])

ItemId = Annotated[int, Path(ge=0, le=MAX_ID, description="The item's int64 id.")]


@router.post(
    "",
    status_code=201,
    response_model=AddResponse,
    responses=error_responses(400, 401, 409, 413, 415, 422, 503),
    dependencies=[WriteAccess],
    summary="Add images",
)
async def add_items(
    engine: EngineDep,
    settings: SettingsDep,
    images: Annotated[
        list[UploadFile], File(description="Images to add; repeat the field once per image.")
    ],
    ids: Annotated[
        str | None, Form(description="Comma-separated int64 ids, one per image (default: new ids).")
    ] = None,
    metadata: Annotated[
        str | None,
        Form(description="A JSON list with one object per image, stored and returned with hits."),
    ] = None,
) -> AddResponse:
    """Encode the images with the database model and store them; answers once they are durable."""
    item_ids = parse_ids(ids, len(images))
    meta = parse_metadata(metadata, len(images), settings.max_metadata_bytes)
    decoded = await read_images(images, settings, "images")
    new_ids = await run_in_threadpool(engine.add_images, decoded, item_ids, meta)
    return AddResponse(ids=new_ids)


@codes_router.post(
    "/codes",
    status_code=201,
    response_model=AddResponse,
    responses=error_responses(400, 401, 409, 413, 422, 503),
    dependencies=[WriteAccess],
    summary="Add precomputed codes (a code set from `hashkd encode`)",
)
async def add_codes(
    engine: EngineDep,
    settings: SettingsDep,
    codes: Annotated[
        UploadFile, File(description="codes.npy: uint8 array n x K/8 (database-model codes).")
    ],
    ids: Annotated[
        UploadFile | None, File(description="ids.npy: int64 array n (default: new ids).")
    ] = None,
    labels: Annotated[
        UploadFile | None,
        File(description="labels.npy: n x C multi-hot; stored as metadata {'labels': [...]}."),
    ] = None,
    metadata: Annotated[
        UploadFile | None, File(description="A JSON file: a list with one object per code.")
    ] = None,
) -> AddResponse:
    """Bulk-add codes computed offline; items added this way have no thumbnail."""
    cap = settings.max_codes_bytes
    code_arr = load_npy(await read_capped(codes, cap, "codes"), "codes")
    id_arr = load_npy(await read_capped(ids, cap, "ids"), "ids") if ids is not None else None
    code_arr, item_ids = check_code_upload(code_arr, id_arr, engine.bits)
    n = code_arr.shape[0]
    meta = None
    if metadata is not None:
        meta = parse_metadata(
            await read_capped(metadata, settings.max_metadata_bytes, "metadata"),
            n,
            settings.max_metadata_bytes,
        )
    if labels is not None:
        lab = labels_metadata(load_npy(await read_capped(labels, cap, "labels"), "labels"), n)
        meta = [{**m, **lb} for m, lb in zip(meta, lab, strict=True)] if meta is not None else lab
    new_ids = await run_in_threadpool(engine.add_codes, code_arr, item_ids, meta)
    return AddResponse(ids=new_ids)


@router.get(
    "/{item_id}",
    response_model=ItemResponse,
    responses=error_responses(404, 422, 503),
    summary="Get an item",
)
def get_item(engine: EngineDep, item_id: ItemId) -> ItemResponse:
    item = engine.get_item(item_id)
    return ItemResponse(
        id=item.id,
        bits=engine.bits,
        code=item.code.hex(),
        metadata=item.metadata,
        has_thumbnail=item.has_thumbnail,
    )


@router.delete(
    "/{item_id}",
    response_model=DeleteResponse,
    responses=error_responses(401, 404, 422, 503),
    dependencies=[WriteAccess],
    summary="Delete an item",
)
def delete_item(engine: EngineDep, item_id: ItemId) -> DeleteResponse:
    engine.delete_item(item_id)
    return DeleteResponse(id=item_id)


@router.get(
    "/{item_id}/thumbnail",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "A small JPEG of the item."},
        **error_responses(404, 422, 503),
    },
    summary="The item's thumbnail",
)
def get_thumbnail(engine: EngineDep, item_id: ItemId) -> Response:
    data = engine.thumbnail(item_id)
    if data is None:
        raise ApiError(404, f"item {item_id} has no thumbnail (it was added as a bare code)")
    return Response(
        content=data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
    )
