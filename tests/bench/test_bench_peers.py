"""The peers' request carries the very tensor vitserve receives; every peer setup is complete."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from bench.payloads import infer_request
from bench.peers import PEERS, PEERS_DIR, json_request


def test_json_request_holds_the_same_tensor_as_the_v2_request() -> None:
    chw = (3, 8, 8)
    js = json.loads(json_request(chw).body)
    x_json = np.frombuffer(base64.b64decode(js["items"][0]), dtype="<f4").reshape(chw)
    v2 = infer_request("m", (1, *chw))
    size = int(v2.headers["Inference-Header-Content-Length"])
    x_v2 = np.frombuffer(v2.body[size:], dtype="<f4").reshape(chw)
    np.testing.assert_array_equal(x_json, x_v2)


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_each_peer_has_pinned_requirements_and_a_server_script(peer: str) -> None:
    folder = PEERS_DIR / peer
    assert (folder / PEERS[peer].script).is_file()
    lines = [ln.split("#")[0].strip() for ln in (folder / "requirements.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln]
    assert pins and all("==" in ln for ln in pins), pins
