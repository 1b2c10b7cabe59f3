"""The request cost `torpor profile` measures: through a real server, less what the server reports."""

from __future__ import annotations

import orjson
import pytest

from gateway.sim import requestcost


def test_the_body_is_the_load_tests_request_of_the_model() -> None:
    body = requestcost.body_for("mlp")
    assert body.headers == {"content-type": "application/json"}
    (tensor,) = orjson.loads(body.content)["inputs"]
    assert tensor["name"] == "input" and tensor["shape"] == [1, 64] and len(tensor["data"]) == 64


def test_binary_bodies_carry_the_same_tensors_as_json_ones() -> None:
    from gateway import oip
    from shared import zoo

    for model in ("mlp", "bert-base"):  # FP32 values; INT64 token ids
        specs = zoo.entry(model).inputs
        as_json, binary = requestcost.body_for(model), requestcost.body_for(model, "binary")
        assert binary.headers["content-type"] == "application/octet-stream"
        length = int(binary.headers["inference-header-content-length"])
        if model == "mlp":  # 4 bytes a float, where JSON writes ~20 (token ids below 100 write shorter)
            assert len(binary.content) < len(as_json.content) / 2
        parsed_json = oip.parse_request(as_json.content, model, specs)
        parsed_binary = oip.parse_request(binary.content, model, specs, length)
        for a, b in zip(parsed_json.inputs, parsed_binary.inputs, strict=True):
            assert (a["name"], a["shape"], bytes(a["data"])) == (b["name"], b["shape"], bytes(b["data"])), model
    with pytest.raises(ValueError, match="encoding: expected one of json, binary, got 'xml'"):
        requestcost.body_for("mlp", "xml")


def test_a_request_is_timed_through_a_real_server_outside_its_queue_and_execution() -> None:
    # Two functions on one device: the second one's time includes none of the first's execution.
    got = requestcost.measure(["mlp", "resnet18"], devices=1, memory=256 << 20, runs=3, warmup=1, spread_runs=5)
    assert set(got) == {"mlp", "resnet18"}
    for name, (ms, slowdowns, spread) in got.items():
        assert 0.0 < ms < 1000.0, name
        assert slowdowns == ()  # nothing measured beside: no slowdown claimed
        # Its spread over the 5 requests alone: 21 points from the fastest to the slowest, the median 1.
        assert len(spread) == 21 and spread[0] <= 1.0 <= spread[-1] and spread[10] == 1.0, (name, spread)
        assert list(spread) == sorted(spread)
    # A resnet18 request carries a 600 KB JSON body, mlp's 1 KB: its time outside execution is longer.
    assert got["resnet18"].ms > got["mlp"].ms


def test_a_binary_request_costs_the_server_less_than_its_json_one() -> None:
    # resnet18's image: 3 MB of JSON text to read and parse, or 600 KB of raw bytes.
    costs = {
        encoding: requestcost.measure(["resnet18"], 1, 64 << 20, runs=3, warmup=1, encoding=encoding)["resnet18"].ms
        for encoding in ("json", "binary")
    }
    assert 0.0 < costs["binary"] < costs["json"], costs


def test_a_cold_request_is_timed_through_a_real_server_against_a_warm_one() -> None:
    # resnet18's 45 MiB image is copied into the device on every cold request (cold_penalty raises
    # if a request it expects cold is warm or the other way round). Back to back on a quiet server
    # the copy can hide whole behind the execution: the median may be 0, never below, and not a second.
    nbytes = 46_827_520
    ms = requestcost.cold_penalty("resnet18", nbytes, runs=3)
    assert 0.0 <= ms < 1000.0


def test_a_cold_penalty_is_the_copys_unhidden_share_first_then_a_fixed_cost() -> None:
    from gateway.costmodel import pipelined
    from gateway.sim.measure import cold_terms

    cases = ((2.0, 8.0, 50.0), (8.0, 6.0, 50.0), (0.0, 6.0, 50.0), (80.0, 90.0, 20.0), (100.0, 90.0, 20.0))
    for penalty, copy, run in cases:
        overlap, fixed = cold_terms(penalty, copy, run)
        assert 0.0 <= overlap <= 1.0 and fixed >= 0.0
        # What the simulator then charges a cold run alone over a warm one is the penalty measured.
        assert pipelined(copy, run, overlap) + fixed - run == pytest.approx(penalty)
    assert cold_terms(2.0, 8.0, 50.0) == (0.75, 0.0)
    assert cold_terms(8.0, 6.0, 50.0) == (0.0, 2.0)
    assert cold_terms(50.0, 90.0, 20.0) == (1.0, 0.0)  # below the floor of a copy longer than the run


def test_a_model_the_server_cannot_deploy_is_named() -> None:
    with pytest.raises(RuntimeError, match="deploying no-such-model"):
        requestcost.measure(["no-such-model"], devices=1, memory=64 << 20, runs=1, warmup=0)


def test_memory_is_given_in_whole_mebibytes_rounded_up() -> None:
    assert requestcost.memory_arg(64 << 20) == "64MiB"
    assert requestcost.memory_arg((64 << 20) + 1) == "65MiB"
