"""A FastAPI JSON endpoint bench/http_bench.py serves on both servers."""
from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q, "tags": ["a", "b"], "price": 12.5}
