"""A WebSocket chat over pyport pub/sub, for test_http_websocket.py (two
workers of one HTTP pool): /chat waits on the socket and the topic at once
(the awaitable form); /seed is Hornbeam's documented loop, as written."""
import asyncio
import json
import os

import erlang
from hornbeam_erlang import publish, receive_pubsub, subscribe, unsubscribe


async def chat(scope, receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    room = scope["path"].rsplit("/", 1)[-1]
    erlang.subscribe(f"chat:{room}")
    await send({"type": "websocket.send", "text": json.dumps({"pid": os.getpid()})})
    from_client = asyncio.ensure_future(receive())
    from_topic = asyncio.ensure_future(erlang.async_receive_pubsub())
    try:
        while True:
            done, _ = await asyncio.wait({from_client, from_topic},
                                         return_when=asyncio.FIRST_COMPLETED)
            if from_client in done:
                message = from_client.result()
                if message["type"] == "websocket.disconnect":
                    return
                erlang.publish(f"chat:{room}", {"from": os.getpid(), "text": message["text"]})
                from_client = asyncio.ensure_future(receive())
            if from_topic in done:
                _topic, message = from_topic.result()
                await send({"type": "websocket.send", "text": json.dumps(message)})
                from_topic = asyncio.ensure_future(erlang.async_receive_pubsub())
    finally:
        from_client.cancel()
        from_topic.cancel()


def get_user_from_scope(scope):
    return scope["path"].rsplit("/", 1)[-1]


async def websocket_handler(scope, receive, send):
    # Hornbeam's example (hornbeam-erlang-integration.md), unchanged.
    await send({'type': 'websocket.accept'})

    user_id = get_user_from_scope(scope)
    subscribe(f'user:{user_id}')

    try:
        while True:
            # Check for client messages
            message = await receive()
            if message['type'] == 'websocket.disconnect':
                break

            # Check for pub/sub messages
            pubsub_msg = receive_pubsub(timeout=0)
            if pubsub_msg:
                await send({
                    'type': 'websocket.send',
                    'text': json.dumps(pubsub_msg)
                })
    finally:
        unsubscribe(f'user:{user_id}')


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        if scope["path"].startswith("/publish/"):
            n = publish(scope["path"][len("/publish/"):], {"n": 1})
            body = str(n).encode()
        else:
            body = b"chat"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"].startswith("/seed/"):
        await receive()  # websocket.connect (the seed's handler starts after it)
        await websocket_handler(scope, receive, send)
    else:
        await chat(scope, receive, send)
