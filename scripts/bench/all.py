#!/usr/bin/python3
"""Benchmark: our btfs against Debian's btfs on the same local swarms, in one run.

scripts/bench.sh runs this once it has built ours. Six parts (--skip leaves one out), and a
seventh, thin, only when asked for (--with thin: it takes 15-20 minutes), each on its own
swarm, stopped before the next, in one network namespace, with one table at the end (thin adds
its own); each part is also a script of its own beside this one (file.py, video.py, magnet.py,
webseed.py, encryption.py, utp.py, thin.py), which prints its rows alone.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The parts, from this folder.
import encryption
import file
import magnet
import thin
import utp
import video
import webseed
from harness.cli import main

if __name__ == "__main__":
    sys.exit(main(__doc__, [file, video, magnet, webseed, encryption, utp, thin]))
