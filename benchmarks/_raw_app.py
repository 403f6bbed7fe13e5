"""The baseline for benchmarks/serve.py: the least code that serves a V1 `:predict` route.

A bare ASGI callable on uvicorn (uvloop, httptools, no access log), no framework, no batching,
no validation beyond what onnxruntime does: parse `{"instances": [[...], ...]}` with orjson,
call the onnxruntime session in the event loop, return `{"predictions": ...}` shaped like
Shipyard's answer (one `{output: value}` object per row when the model has several outputs), so
both servers do the same serialization work. The session uses onnxruntime's default options,
as Shipyard does (intra/inter-op threads 0 = library default, all graph optimizations).

    python benchmarks/_raw_app.py MODEL.onnx PORT
    RAW_APP_MODEL=MODEL.onnx RAW_APP_PORT=PORT python benchmarks/_raw_app.py

`GET /readyz` answers 200 once the socket is open: the session is built before uvicorn starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


def build_app(model_path: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    async def respond(send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/readyz":
            await respond(send, 200, b'{"ready":true}')
            return
        if method != "POST" or not path.endswith(":predict"):
            await respond(send, 404, b'{"error":"not found"}')
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            rows = np.asarray(orjson.loads(b"".join(chunks))["instances"], dtype=np.float32)
            outputs = session.run(output_names, {input_name: rows})
        except Exception as exc:
            await respond(send, 400, orjson.dumps({"error": str(exc)}))
            return
        if len(outputs) == 1:
            predictions: Any = outputs[0].tolist()
        else:
            columns = [o.tolist() for o in outputs]
            predictions = [dict(zip(output_names, row, strict=True)) for row in zip(*columns, strict=True)]
        await respond(send, 200, orjson.dumps({"predictions": predictions}))

    return app


def main(argv: list[str]) -> None:
    model = argv[1] if len(argv) > 1 else os.environ.get("RAW_APP_MODEL")
    port = argv[2] if len(argv) > 2 else os.environ.get("RAW_APP_PORT")
    if not model or not port:
        sys.exit("usage: _raw_app.py MODEL.onnx PORT  (or RAW_APP_MODEL / RAW_APP_PORT)")
    uvicorn.run(
        build_app(model),
        host="127.0.0.1",
        port=int(port),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main(sys.argv)
