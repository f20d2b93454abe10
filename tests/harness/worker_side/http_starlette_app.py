"""A Starlette (Debian's 0.26) app for tests/harness/test_http_frameworks.py."""
import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

done: list = []


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.items = {"started": True}
    yield
    done.append("shutdown")


async def item(request: Request):
    return JSONResponse({"id": int(request.path_params["id"]),
                         "q": request.query_params.get("q"),
                         "state": request.app.state.items})


async def upload(request: Request):
    body = await request.body()
    form_type = request.headers.get("content-type", "")
    return JSONResponse({"size": len(body), "type": form_type})


async def form(request: Request):
    data = await request.form()
    return JSONResponse(dict(data))


async def numbers(request: Request):
    async def gen():
        for i in range(5):
            yield f"data: {i}\n\n"
            await asyncio.sleep(0)
    return StreamingResponse(gen(), media_type="text/event-stream")


async def background(request: Request):
    async def later():
        done.append("background")
    return PlainTextResponse("queued", background=BackgroundTask(later))


async def report(request: Request):
    return JSONResponse(done)


app = Starlette(routes=[Route("/items/{id:int}", item), Route("/upload", upload, methods=["POST"]),
                        Route("/form", form, methods=["POST"]), Route("/sse", numbers),
                        Route("/background", background), Route("/done", report)],
                lifespan=lifespan)
