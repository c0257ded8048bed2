"""Kafka's storage tool reads a cluster id starting with '-' as an option and refuses to format."""

from __future__ import annotations

import base64

from tools.devstack.servers import new_cluster_id


def test_cluster_ids_are_16_random_bytes_that_never_look_like_an_option() -> None:
    ids = [new_cluster_id() for _ in range(5000)]  # 1 in 64 would start with '-' without the guard
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
