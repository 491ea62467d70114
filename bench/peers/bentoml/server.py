"""Start the BentoML peer (service.py) with the common peer arguments (see ../README.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, required=True)
    p.add_argument("--max-delay-ms", type=float, required=True, help="not a BentoML knob (adaptive batching); recorded")
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()
    env = dict(os.environ, PEER_MODEL=a.model, PEER_MAX_BATCH_SIZE=str(a.max_batch_size), PEER_THREADS=str(a.threads),
               BENTOML_DO_NOT_TRACK="true")
    bentoml = str(Path(sys.executable).parent / "bentoml")
    here = Path(__file__).resolve().parent
    os.chdir(here)
    os.execve(bentoml, [bentoml, "serve", "service:OnnxClassifier", "--host", "127.0.0.1", "--port", str(a.port)], env)


if __name__ == "__main__":
    main()
