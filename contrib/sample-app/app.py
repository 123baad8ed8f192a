"""A hello-world web process: it serves on $PORT, as every piku `web` kind does."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"Hello from {os.environ['APP']} ({os.environ['PROC_TYPE']}, pid {os.getpid()})\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


address = (os.environ.get("BIND_ADDRESS", "127.0.0.1"), int(os.environ["PORT"]))
print(f"listening on http://{address[0]}:{address[1]}/", flush=True)
ThreadingHTTPServer(address, Hello).serve_forever()
