"""Items: add by image or by precomputed codes, read, delete, thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import EngineDep, SettingsDep, WriteAccess
from service.errors import ApiError
from service.routers.common import (
    CONSISTENCY,
    ConsistencyDep,
    error_responses,
    read_images,
    write_token,
)
from service.schemas import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    AddResponse,
    DeleteResponse,
    ItemListResponse,
    ItemResponse,
    ItemSummary,
    UpsertResponse,
)
from service.uploads import (
    MAX_ID,
    check_code_upload,
    check_labels,
    load_npy,
    parse_ids,
    parse_metadata,
    parse_metadata_object,
    paths_metadata,
    read_capped,
)

router = APIRouter(prefix="/v1/items", tags=["items"], dependencies=CONSISTENCY)
#: Bulk code uploads get their own body limit (see create_app).
codes_router = APIRouter(prefix="/v1/items", tags=["items"], dependencies=CONSISTENCY)

ItemId = Annotated[int, Path(ge=0, le=MAX_ID, description="The item's int64 id.")]


@router.post(
    "",
    status_code=201,
    response_model=AddResponse,
    response_model_exclude_none=True,  # no consistency_token in the embedded mode
    responses=error_responses(400, 401, 409, 413, 415, 422, 503),
    dependencies=[WriteAccess],
    summary="Add images",
)
async def add_items(
    engine: EngineDep,
    settings: SettingsDep,
    state: ConsistencyDep,
    response: Response,
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
    return AddResponse(ids=new_ids, consistency_token=write_token(response, state))


@codes_router.post(
    "/codes",
    status_code=201,
    response_model=AddResponse,
    response_model_exclude_none=True,  # no consistency_token in the embedded mode
    responses=error_responses(400, 401, 409, 413, 422, 503),
    dependencies=[WriteAccess],
    summary="Add precomputed codes (a code set from `hashkd encode`)",
)
async def add_codes(
    engine: EngineDep,
    settings: SettingsDep,
    state: ConsistencyDep,
    response: Response,
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
    paths: Annotated[
        UploadFile | None,
        File(description="paths.json: each code's source file; stored as metadata {'path': ...}."),
    ] = None,
) -> AddResponse:
    """Bulk-add codes computed offline; items added this way have no thumbnail.

    An upload of more than 100,000 codes is added in chunks of 100,000 (each durable when
    added; no Python object per item beyond one chunk): explicit ids are checked against the
    store before the first chunk, so a duplicate id adds nothing."""
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
    label_arr = None
    if labels is not None:
        label_arr = check_labels(load_npy(await read_capped(labels, cap, "labels"), "labels"), n)
    if paths is not None:
        cap_json = settings.max_codes_bytes
        where = paths_metadata(await read_capped(paths, cap_json, "paths"), n, cap_json)
        meta = [{**m, **w} for m, w in zip(meta, where, strict=True)] if meta is not None else where
    new_ids = await run_in_threadpool(engine.import_codes, code_arr, item_ids, meta, label_arr)
    return AddResponse(ids=new_ids, consistency_token=write_token(response, state))


@router.put(
    "/{item_id}",
    response_model=UpsertResponse,
    response_model_exclude_none=True,  # no consistency_token in the embedded mode
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
    dependencies=[WriteAccess],
    summary="Create or replace an item (upsert)",
)
async def upsert_item(
    engine: EngineDep,
    settings: SettingsDep,
    state: ConsistencyDep,
    response: Response,
    item_id: ItemId,
    image: Annotated[
        UploadFile | None,
        File(description="A new image for the item (re-encoded with the database model)."),
    ] = None,
    metadata: Annotated[
        str | None, Form(description="A JSON object replacing the item's metadata.")
    ] = None,
) -> UpsertResponse:
    """Replace the image and/or the metadata of an item, or create it (a new item needs an
    image; 404 for metadata alone on an unknown id); answers once the change is durable."""
    meta = parse_metadata_object(metadata, settings.max_metadata_bytes)
    if image is None and meta is None:
        raise ApiError(422, "give an image, metadata or both: a PUT replaces what it is given")
    decoded = (await read_images([image], settings, "image"))[0] if image is not None else None
    created = await run_in_threadpool(engine.upsert_item, item_id, decoded, meta)
    return UpsertResponse(
        id=item_id, created=created, consistency_token=write_token(response, state)
    )


@router.get(
    "",
    response_model=ItemListResponse,
    responses=error_responses(422, 503),
    summary="List items (pages by id)",
)
def list_items(
    engine: EngineDep,
    after: Annotated[
        int,
        Query(ge=-1, le=MAX_ID, description="Only ids above this one (default: from the start)."),
    ] = -1,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_LIST_LIMIT, description=f"Items per page (1-{MAX_LIST_LIMIT})."),
    ] = DEFAULT_LIST_LIMIT,
) -> ItemListResponse:
    """Items in ascending id order with their metadata; follow ``next_after`` to page."""
    items = engine.list_items(after, limit)
    return ItemListResponse(
        items=[
            ItemSummary(
                id=i.id, code=i.code.hex(), metadata=i.metadata, has_thumbnail=i.has_thumbnail
            )
            for i in items
        ],
        next_after=items[-1].id if len(items) == limit else None,
    )


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
    response_model_exclude_none=True,  # no consistency_token in the embedded mode
    responses=error_responses(401, 404, 422, 503),
    dependencies=[WriteAccess],
    summary="Delete an item",
)
def delete_item(
    engine: EngineDep, item_id: ItemId, state: ConsistencyDep, response: Response
) -> DeleteResponse:
    engine.delete_item(item_id)
    return DeleteResponse(id=item_id, consistency_token=write_token(response, state))


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
