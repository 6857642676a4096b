"""A FastAPI application for the integration tests: pydantic models, a dependency, async and
sync routes (FastAPI runs sync routes in a worker thread), errors and validation.

No ``from __future__ import annotations`` here: FastAPI reads the annotations at run time.
"""

import asyncio
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


async def common(limit: int = 10) -> dict[str, int]:
    return {"limit": limit}


def make_fastapi_app() -> FastAPI:
    app = FastAPI()
    items: dict[int, dict[str, Any]] = {}

    @app.get("/loop")
    async def which_loop() -> dict[str, str]:
        return {"loop": type(asyncio.get_running_loop()).__module__}

    @app.put("/items/{item_id}")
    async def put_item(item_id: int, item: Item) -> dict[str, Any]:
        items[item_id] = item.model_dump()
        return {"id": item_id, **items[item_id]}

    @app.get("/items")
    async def list_items(params: Annotated[dict[str, int], Depends(common)]) -> list[Any]:
        return [{"id": k, **v} for k, v in sorted(items.items())][: params["limit"]]

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, Any]:  # sync route: runs in a worker thread
        if item_id not in items:
            raise HTTPException(status_code=404, detail="no such item")
        return {"id": item_id, **items[item_id]}

    return app
