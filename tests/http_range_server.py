"""A static file server on 127.0.0.1 that honours single HTTP Range requests (Python's `http.server` does not), for
tests and benchmarks of remote rasters and STAC items.

    python tests/http_range_server.py FOLDER [--log requests.log] [--lifetime SECONDS]

Prints `PORT` on its first stdout line once listening. Each GET appends `path status bytes_sent` to --log. It exits
by itself after --lifetime seconds, so a crashed test never leaves it running. It runs as its own process: GDAL can
hold the GIL while it waits for a server thread of the same process.
"""

import argparse
import functools
import http.server
import os
import re
import sys
import threading

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    log_path: str | None = None

    def send_head(self):
        path = self.translate_path(self.path)
        header = self.headers.get("Range")
        if header is None or not os.path.isfile(path):
            self._range = None
            return super().send_head()
        match, size = RANGE.match(header.strip()), os.path.getsize(path)
        if match is None or match.groups() == ("", ""):
            self.send_error(416, "only one bytes=START-END range is served")
            return None
        start, end = match.groups()
        if start == "":
            start, end = max(0, size - int(end)), size - 1
        else:
            start, end = int(start), min(size - 1, int(end) if end else size - 1)
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        self._range = (start, end)
        file = open(path, "rb")
        file.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return file

    def do_GET(self):
        file = self.send_head()
        sent = 0
        if file is not None:
            try:
                if self._range is None:
                    sent = os.fstat(file.fileno()).st_size
                    self.copyfile(file, self.wfile)
                else:
                    sent = self._range[1] - self._range[0] + 1
                    self.wfile.write(file.read(sent))
            finally:
                file.close()
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(f"{self.path} {sent}\n")

    def log_message(self, format, *args):  # quiet: the test's output stays readable
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--log", help="append `path bytes_sent` per GET to this file")
    parser.add_argument("--lifetime", type=float, default=600.0, help="exit after this many seconds (default 600)")
    args = parser.parse_args()
    handler = functools.partial(type("Handler", (RangeRequestHandler,), {"log_path": args.log}),
                                directory=args.folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    stopper = threading.Timer(args.lifetime, server.shutdown)
    stopper.daemon = True
    stopper.start()
    print(server.server_address[1], flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
