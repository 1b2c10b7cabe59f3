"""`torpor serve --cluster ...` settings: checked at start, each error naming its flag."""

from __future__ import annotations

import pytest

from gateway.cluster.config import cluster_config
from shared.errors import InvalidInput

TOKEN = "0123456789abcdef"


def test_defaults_name_and_advertise_from_host_and_port() -> None:
    cfg = cluster_config("rediss://user:pw@redis:6380/2", None, None, TOKEN, "10.0.0.5", 8081, 1 << 30)
    assert (cfg.node, cfg.advertise, cfg.host_memory, cfg.max_replicas) == (
        "10.0.0.5:8081",
        "http://10.0.0.5:8081",
        1 << 30,
        3,
    )
    cfg = cluster_config("redis://redis:6379", "a", "https://a.internal/", TOKEN, "0.0.0.0", 8080, 0, 1)
    assert (cfg.node, cfg.advertise, cfg.max_replicas) == ("a", "https://a.internal", 1)


@pytest.mark.parametrize(
    ("url", "token", "advertise", "node", "replicas", "flag"),
    [
        ("http://redis:6379", TOKEN, None, None, 3, "--cluster"),
        ("redis://", TOKEN, None, None, 3, "--cluster"),
        ("redis://redis:port", TOKEN, None, None, 3, "--cluster"),
        ("redis://redis:6379/db", TOKEN, None, None, 3, "--cluster"),
        ("redis://redis:6379/0", None, None, None, 3, "--cluster-token"),
        ("redis://redis:6379/0", "short", None, None, 3, "--cluster-token"),
        ("redis://redis:6379/0", TOKEN, "ftp://x", None, 3, "--advertise"),
        ("redis://redis:6379/0", TOKEN, None, "a b", 3, "--node"),
        ("redis://redis:6379/0", TOKEN, None, None, 0, "--max-replicas"),
    ],
)
def test_bad_settings_name_their_flag(
    url: str, token: str | None, advertise: str | None, node: str | None, replicas: int, flag: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        cluster_config(url, node, advertise, token, "127.0.0.1", 8080, 0, replicas)
    assert exc.value.message.startswith(flag)
