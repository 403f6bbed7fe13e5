"""A real S3 endpoint for the tests: moto's server on a free loopback port, in its own process.

It counts the S3 operations it answers, so tests can tell that a server started from its cache
downloaded nothing, and wait (without sleeping) until an upload is under way:

    GET /_counts                      -> {"GetObject": 3, "UploadPart": 2, ...}
    GET /_wait?op=UploadPart&count=1  -> blocks until that many have been answered (or 30 s)

`moto_runner.py [ADDRESS]` listens on ADDRESS (default 127.0.0.1) and prints `PORT <n>` on stdout
once it does.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

counts: collections.Counter[str] = collections.Counter()
changed = threading.Condition()


def operation(environ: dict[str, Any]) -> str:
    method: str = environ["REQUEST_METHOD"]
    query = parse_qs(environ.get("QUERY_STRING", ""), True)
    if "uploadId" in query:
        return {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(
            method, "ListParts"
        )
    if "uploads" in query:
        return "CreateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    if "/" not in environ.get("PATH_INFO", "").strip("/"):  # /bucket: not an object
        return {"GET": "ListObjects", "PUT": "CreateBucket", "POST": "DeleteObjects"}.get(method, method)
    return {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, method
    )


def main() -> None:
    moto = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in ("/_counts", "/_wait"):
            if path == "/_wait":
                query = parse_qs(environ.get("QUERY_STRING", ""))
                op, wanted = query["op"][0], int(query.get("count", ["1"])[0])
                with changed:
                    changed.wait_for(lambda: counts[op] >= wanted, timeout=30)
            body = json.dumps(dict(counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if not path.startswith("/moto-api"):
            with changed:
                counts[operation(environ)] += 1
                changed.notify_all()
        return moto(environ, start_response)

    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"  # the cluster binds its bridge's address
    server = make_server(host, 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
