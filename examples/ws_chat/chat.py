"""A chat over WebSocket and pyport pub/sub (docs/http.md, "WebSocket").

Every worker of the HTTP pool serves the page at / and WebSockets at
/ws/<room>; a message goes to topic "chat:<room>" with erlang.publish, and
every handler subscribed to it, on any worker (or node), sends it on."""
import asyncio
import json
import os

import erlang

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>pyport chat</title>
<ul id="log"></ul>
<form id="f"><input id="msg" autocomplete="off" autofocus><button>Send</button></form>
<script>
const room = location.hash.slice(1) || "lobby";
const ws = new WebSocket(`ws://${location.host}/ws/${room}`);
const log = (text) => { const li = document.createElement("li");
                         li.textContent = text; document.getElementById("log").append(li); };
ws.onmessage = (e) => { const m = JSON.parse(e.data);
                        log(m.text !== undefined ? `${m.from}: ${m.text}` : `joined worker ${m.worker}`); };
document.getElementById("f").onsubmit = (e) => { e.preventDefault();
  const input = document.getElementById("msg"); ws.send(input.value); input.value = ""; };
</script>
"""


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": PAGE})
    elif scope["type"] == "websocket":
        await chat(scope, receive, send)


async def chat(scope, receive, send):
    await receive()  # websocket.connect
    if not scope["path"].startswith("/ws/"):
        await send({"type": "websocket.close", "code": 1008})  # 403
        return
    await send({"type": "websocket.accept"})
    topic = "chat:" + scope["path"][len("/ws/"):]
    erlang.subscribe(topic)
    await send({"type": "websocket.send", "text": json.dumps({"worker": os.getpid()})})
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
                text = message.get("text") or ""
                erlang.publish(topic, {"from": f"worker {os.getpid()}", "text": text[:1000]})
                from_client = asyncio.ensure_future(receive())
            if from_topic in done:
                _topic, message = from_topic.result()
                await send({"type": "websocket.send", "text": json.dumps(message)})
                from_topic = asyncio.ensure_future(erlang.async_receive_pubsub())
    finally:
        from_client.cancel()
        from_topic.cancel()
