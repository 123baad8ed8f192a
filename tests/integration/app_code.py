"""App code the re-exec and fd-store tests deploy (strings written into an app's folder)."""

# Serves the daemon's socket (fd 3) with keep-alive, answers with its pid, and logs
# nothing per request, so a long load cannot fill its log pipe while no pikud reads it.
PID_SERVER = """\
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.daemon_threads = True
server.serve_forever()
"""
