"""A FastAPI (Debian's 0.92) app for tests/harness/test_http_frameworks.py."""
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI()
started: list = []


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.on_event("startup")
async def startup() -> None:
    started.append("startup")


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    if item_id == 0:
        raise HTTPException(status_code=404, detail="no item 0")
    return {"item_id": item_id, "q": q, "started": started}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "total": item.price * 2, "tags": item.tags}
