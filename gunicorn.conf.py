"""Gunicorn settings: one worker process holding the model, many threads serving it.

Every value can be overridden on the command line (`-b 127.0.0.1:9000`) or through the
environment variables named below.
"""

import os

# Listen on every interface by default; `-b` or GUNICORN_BIND overrides.
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")

# One process: a second worker would load a second copy of the model onto the GPU.
workers = 1

# Threads share the one loaded model; requests wait in the app, not in the socket backlog.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "32"))

# Never import the app in the master: CUDA cannot be re-initialised in a forked child.
preload_app = False

# The gthread worker beats its heartbeat from its main loop, and the model loads in a
# background thread, so neither slow loads nor long generations trip this timeout.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))

# On SIGTERM, give running generations this long to finish before the worker is killed.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "330"))

# Keep idle client connections briefly so scripts that poll reuse them.
keepalive = 5

# Proxy headers are trusted by the app (TRUSTED_PROXIES through ProxyFix), in one place,
# not by Gunicorn as well.
forwarded_allow_ips = ""

# Log requests to stderr with Gunicorn's access format, errors likewise.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
