"""A web seed for the benchmark (BEP 19): Debian's nginx serving a folder on a free loopback
port, with its own config, pid file, logs and temp folders under the work dir."""

import os
import socket
import time

from harness.procs import free_port, tail

NGINX = "/usr/sbin/nginx"
READY_TIMEOUT = 30.0


class Nginx:
    """nginx serving `root` at http://127.0.0.1:PORT/ (byte ranges, keep-alive, sendfile)."""

    def __init__(self, procs, work, tag, root):
        self.procs = procs
        self.dir = os.path.join(work, "nginx-" + tag)
        os.makedirs(self.dir)
        self.port = free_port("127.0.0.1")
        self.url = "http://127.0.0.1:%d/" % self.port
        temp = "".join("  %s_temp_path %s;\n" % (t, t)
                       for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # `user root`: its worker reads the work dir (ignored, with a notice, unless root).
        conf = ("daemon off;\nworker_processes 1;\npid nginx.pid;\nuser root;\n"
                "events { worker_connections 256; }\n"
                "http {\n  access_log off;\n%s  sendfile on;\n  keepalive_requests 100000;\n"
                "  default_type application/octet-stream;\n"
                "  server { listen 127.0.0.1:%d; root \"%s\"; }\n}\n"
                % (temp, self.port, os.path.abspath(root)))
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.log = os.path.join(work, "nginx-%s.log" % tag)
        self.proc = procs.spawn([NGINX, "-p", self.dir, "-c", path, "-e", self.log], self.log)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx never listened:\n" + tail(self.log))
                time.sleep(0.05)

    def stop(self):
        """Ends nginx by its PID (the master ends its worker)."""
        self.procs.stop(self.proc)
