"""The simulator: profiles, the discrete-event engine around the live scheduler, summaries."""

from __future__ import annotations

import random

import pytest

from gateway.sim.engine import SimFunction, Simulation
from gateway.sim.profile import builtin, dump, load, parse
from gateway.sim.summary import summarize

PROFILE = {
    "name": "two small GPUs",
    "devices": 2,
    "device_memory": "1GiB",
    "reserve": "0",
    "switches": [0, 0],
    "host_bandwidth_gbps": 10.0,
    "links": [{"devices": [0, 1], "gbps": 40.0}],
    "pipeline_overlap": 0.8,
    "interference": 1.3,
    "models": {
        "small": {"bytes": 100_000_000, "exec_ms": 5.0, "batch_exec_ms": 12.0, "max_batch": 4, "heavy": False},
        "big": {"bytes": 400_000_000, "exec_ms": 20.0, "heavy": True},
    },
}


def poisson(rates: list[float], seconds: float, seed: int = 0) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    out = []
    for i, rate in enumerate(rates):
        t = rng.expovariate(rate)
        while t < seconds:
            out.append((t, i))
            t += rng.expovariate(rate)
    return sorted(out)


def functions(n: int, slo_factor: float = 10.0) -> list[SimFunction]:
    p = parse(PROFILE)
    models = [p.models["small"], p.models["big"]]
    return [SimFunction(f"f{i}", models[i % 2], slo_factor * models[i % 2].exec_ms) for i in range(n)]


def test_profile_parses_and_names_what_is_wrong() -> None:
    p = parse(PROFILE)
    assert p.devices == 2 and p.topology.direct(0, 1) and p.topology.neighbours(0) == [1]
    assert p.models["small"].max_batch == 4 and not p.models["small"].heavy
    bad = dict(PROFILE, switches=[0])
    with pytest.raises(ValueError, match="switches"):
        parse(bad)
    with pytest.raises(ValueError, match="models.x.exec_ms"):
        parse(dict(PROFILE, models={"x": {"bytes": 1}}))


def test_shipped_profiles_load() -> None:
    assert "v100x4" in builtin()
    for name in builtin():
        p = load(name)
        assert p.devices >= 1 and p.models


def test_light_load_is_all_served_within_slo() -> None:
    fns = functions(6)
    sim = Simulation(parse(PROFILE), "torpor", fns).run(poisson([2.0] * 6, 60))
    s = summarize(sim)
    assert s["dropped"] == 0 and s["served"] == s["requests"] > 500
    assert s["functions_meeting_slo"] == 6
    assert all(0 < d["utilization"] < 1 for d in s["devices"])
    assert sum(d["swaps"]["host"] for d in s["devices"]) >= 2, "models start in host memory"


def test_native_serves_only_what_fits_and_swapping_serves_more() -> None:
    fns = functions(16)  # 8 small + 8 big = 4 GB of models on 2 GB of devices
    arrivals = poisson([0.5] * 16, 120)
    native = summarize(Simulation(parse(PROFILE), "native", fns).run(arrivals))
    torpor = summarize(Simulation(parse(PROFILE), "torpor", fns).run(arrivals))
    unserved = [f for f in native["per_function"] if f["attainment"] == 0]
    assert unserved, "native has no device for some functions"
    assert all(f["dropped"] == f["requests"] for f in unserved)
    assert sum(d["swaps"]["host"] + d["swaps"]["peer"] for d in native["devices"]) <= 16 - len(unserved)
    assert torpor["functions_meeting_slo"] > native["functions_meeting_slo"]


def test_same_seed_same_result() -> None:
    arrivals = poisson([1.0] * 8, 30)
    a = summarize(Simulation(parse(PROFILE), "simpleswap", functions(8), seed=3).run(arrivals))
    b = summarize(Simulation(parse(PROFILE), "simpleswap", functions(8), seed=3).run(arrivals))
    assert a == b


def test_batching_and_peer_copies_happen_under_bursts() -> None:
    p = parse(PROFILE)
    fn = SimFunction("burst", p.models["small"], 100.0, max_batch=4)
    # One request makes the model resident on a device, then 40 arrive within 20 ms.
    arrivals = [(0.0, 0)] + [(1.0 + i * 0.0005, 0) for i in range(40)]
    sim = Simulation(p, "torpor", [fn]).run(arrivals)
    s = summarize(sim)
    runs = sum(d["runs"] for d in s["devices"])
    assert s["served"] == 41 and runs < 41, "queued requests ran in batches"
    assert sum(d["swaps"]["peer"] for d in s["devices"]) >= 1, "the second device copied from the first"


def test_a_cluster_spreads_functions_over_its_nodes() -> None:
    from gateway.sim.run import Workload, summary

    p = parse(PROFILE)
    one = summary(p, Workload(functions=12, minutes=1, mean_rate=0.5, nodes=1), "torpor")
    three = summary(p, Workload(functions=12, minutes=1, mean_rate=0.5, nodes=3), "torpor")
    assert three["nodes"] == 3 and len(three["devices"]) == 3 * p.devices
    assert three["functions"] == one["functions"] == 12
    assert three["requests"] == one["requests"], "the same trace, partitioned"
    assert sorted(f["name"] for f in three["per_function"]) == sorted(f["name"] for f in one["per_function"])


def test_execution_beside_another_devices_is_slowed_by_the_models_corun_factor() -> None:
    """CPU devices share the host's cores and memory: while another device executes, a run goes
    at 1 / its model's corun_slowdown, over the time they overlap, whichever started first;
    alone, or with the factor absent, it is not slowed."""
    base = dict(PROFILE, pipeline_overlap=1.0)

    def latencies(corun: float | None, second_at: float = 0.0) -> list[float]:
        big = dict(PROFILE["models"]["big"], **({"corun_slowdown": corun} if corun is not None else {}))
        p = parse(dict(base, models={"big": big}))
        fns = [SimFunction(f"f{i}", p.models["big"], 1000.0) for i in range(2)]
        # Both made resident (one per device) at t=0 and 2, then called at t=4 and 4 + second_at.
        sim = Simulation(p, "torpor", fns).run([(0.0, 0), (2.0, 1), (4.0, 0), (4.0 + second_at, 1)])
        return [round(t.latencies_ms[-1], 6) for t in sim.tallies]

    assert latencies(None) == [20.0, 20.0]
    assert latencies(2.0) == [40.0, 40.0], "together throughout: both at half speed"
    # f0 alone for 10 ms (half its work), then beside f1 at half speed: 20 ms more. f1 does
    # 10 ms of work at half speed in those 20 ms, then the rest alone.
    assert latencies(2.0, 0.010) == [30.0, 30.0]
    assert latencies(2.0, 0.030) == [20.0, 20.0], "one after the other: neither slowed"
    with pytest.raises(ValueError, match="models.big.corun_slowdown"):
        parse(dict(base, models={"big": dict(PROFILE["models"]["big"], corun_slowdown=0.5)}))


def test_a_models_request_time_is_added_to_each_latency() -> None:
    """request_ms (the gateway's parse and encode) lengthens every request of the model, nothing else."""

    def latencies(request_ms: float | None) -> list[float]:
        small = dict(PROFILE["models"]["small"], **({"request_ms": request_ms} if request_ms is not None else {}))
        p = parse(dict(PROFILE, models={"small": small}))
        sim = Simulation(p, "torpor", [SimFunction("f", p.models["small"], 1000.0)]).run([(0.0, 0), (1.0, 0)])
        return sorted(sim.tallies[0].latencies_ms)

    assert [round(b - a, 6) for a, b in zip(latencies(None), latencies(7.5), strict=True)] == [7.5, 7.5]
    with pytest.raises(ValueError, match="models.small.request_ms"):
        parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], request_ms=-1)}))


def test_the_gateway_parses_one_request_at_a_time_before_the_scheduler_sees_it() -> None:
    """request_ms is spent on the gateway's one event loop: requests arriving together queue for it."""
    small = dict(PROFILE["models"]["small"], request_ms=4.0)
    p = parse(dict(PROFILE, models={"small": small}, pipeline_overlap=1.0))
    fns = [SimFunction(f"f{i}", p.models["small"], 1000.0) for i in range(2)]
    alone = Simulation(p, "torpor", fns).run([(0.0, 0), (1.0, 1)])
    together = Simulation(p, "torpor", fns).run([(0.0, 0), (0.0, 1)])
    assert [t.latencies_ms for t in alone.tallies] == [[pytest.approx(9.0)], [pytest.approx(9.0)]]
    # The second request is parsed after the first (4 ms later), then runs on the other device.
    assert [t.latencies_ms for t in together.tallies] == [[pytest.approx(9.0)], [pytest.approx(13.0)]]


def test_on_a_host_with_fewer_cores_than_work_executions_share_them() -> None:
    """host_cores: runs that want more cores than the host has progress at cores / demand,
    re-shared when one ends; without host_cores (GPUs) they do not slow each other."""
    base = dict(PROFILE, pipeline_overlap=1.0, models={"big": PROFILE["models"]["big"]})

    def latencies(cores: int | None, second_at: float) -> list[float]:
        p = parse(dict(base, **({"host_cores": cores} if cores else {})))
        fns = [SimFunction(f"f{i}", p.models["big"], 1000.0) for i in range(2)]
        # f0 and f1 made resident (one per device) at t=0 and 2, then both called from t=4.
        sim = Simulation(p, "torpor", fns).run([(0.0, 0), (2.0, 1), (4.0, 0), (4.0 + second_at, 1)])
        return [round(t.latencies_ms[-1], 6) for t in sim.tallies]

    assert latencies(None, 0.0) == [20.0, 20.0]
    assert latencies(2, 0.0) == [20.0, 20.0], "two cores: room for both"
    assert latencies(1, 0.0) == [40.0, 40.0], "one core: each at half speed"
    # f0 alone 10 ms (half its work), then both at half speed: f0 ends 20 ms later, f1 runs
    # 10 ms at full speed after it.
    assert latencies(1, 0.010) == [30.0, 30.0]
    with pytest.raises(ValueError, match="host_cores"):
        parse(dict(base, host_cores=0))


def test_cores_other_processes_keep_busy_are_not_the_devices() -> None:
    """background_cores: of two cores, half of one is taken by other processes. One run alone
    still has a core; two at once share the 1.5 left (each at 0.75 of full speed)."""
    base = dict(PROFILE, pipeline_overlap=1.0, models={"big": PROFILE["models"]["big"]}, host_cores=2)

    def latencies(background: float, second_at: float) -> list[float]:
        p = parse(dict(base, background_cores=background))
        fns = [SimFunction(f"f{i}", p.models["big"], 1000.0) for i in range(2)]
        sim = Simulation(p, "torpor", fns).run([(0.0, 0), (2.0, 1), (4.0, 0), (4.0 + second_at, 1)])
        return [round(t.latencies_ms[-1], 6) for t in sim.tallies]

    assert latencies(0.0, 0.0) == [20.0, 20.0]
    assert latencies(0.5, 1.0) == [20.0, 20.0], "one at a time: a whole core each"
    assert latencies(0.5, 0.0) == [pytest.approx(20 / 0.75)] * 2
    assert parse(dump(parse(dict(base, background_cores=0.5)), 1 << 30)).background_cores == 0.5
    for bad, match in [(-0.1, "expected a number of cores >= 0"), (2, "needs host_cores above it"), ("1", ">= 0")]:
        with pytest.raises(ValueError, match=f"background_cores: .*{match}"):
            parse(dict(base, background_cores=bad))
    with pytest.raises(ValueError, match="needs host_cores above it"):
        parse(dict(PROFILE, background_cores=0.5))


def test_a_profile_says_which_request_bodies_its_request_cost_was_timed_with() -> None:
    assert parse(PROFILE).request_encoding == "json"  # the default, and left out of a dump
    assert "request_encoding" not in dump(parse(PROFILE), 1 << 30)
    binary = parse(dict(PROFILE, request_encoding="binary"))
    assert parse(dump(binary, 1 << 30)).request_encoding == "binary"
    with pytest.raises(ValueError, match="request_encoding: expected one of json, binary, got 'msgpack'"):
        parse(dict(PROFILE, request_encoding="msgpack"))


def test_on_a_shared_host_another_devices_copy_slows_execution() -> None:
    """CPU devices share one memory system: with shared_host, a run goes at 1 / its model's
    copy_slowdown while another device copies a model in; without it, it is not slowed."""

    def latencies(shared: bool) -> list[float]:
        small = dict(PROFILE["models"]["small"], exec_ms=20.0, batch_exec_ms=50.0, copy_slowdown=2.0)
        models = {"small": small, "big": PROFILE["models"]["big"]}
        p = parse(dict(PROFILE, models=models, switches=[0, 1], links=[], pipeline_overlap=1.0, shared_host=shared))
        fns = [SimFunction("s", p.models["small"], 1000.0), SimFunction("b", p.models["big"], 1000.0)]
        # s runs (t=0); b's cold start copies 400 MB onto a device for 40 ms from t=2; s's next
        # request starts on the other device 1 ms later, during that copy.
        sim = Simulation(p, "torpor", fns, preload=False).run([(0.0, 0), (2.0, 1), (2.001, 0)])
        return [round(x, 6) for x in sim.tallies[0].latencies_ms]

    assert latencies(False) == [20.0, 20.0]
    # 39 ms at half speed beside the copy (it ends at t=2.040): 19.5 ms of work; the last 0.5 alone.
    assert latencies(True) == [20.0, 39.5]
    with pytest.raises(ValueError, match="shared_host"):
        parse(dict(PROFILE, shared_host="yes"))


def test_a_devices_own_prefetch_slows_its_run_as_a_neighbours_copy_does() -> None:
    """The copy engine of a device that executes brings the next model in (the scheduler's
    prefetch); on a shared host its copy thread slows the run beside it as another device's
    copy would. A cold run's own swap-in does not: its overlap is the model's pipeline_overlap."""

    def latencies(shared: bool) -> list[float]:
        small = dict(PROFILE["models"]["small"], exec_ms=20.0, batch_exec_ms=50.0, copy_slowdown=2.0)
        models = {"small": small, "big": PROFILE["models"]["big"]}
        p = parse(
            dict(PROFILE, devices=1, switches=[0], links=[], models=models, pipeline_overlap=1.0, shared_host=shared)
        )
        fns = [SimFunction("s", p.models["small"], 1000.0), SimFunction("b", p.models["big"], 1000.0)]
        # s cold (its 10 ms copy hidden under its 20 ms run), then warm at t=2; b's request at
        # t=2.001 waits, and the busy device prefetches its 400 MB for 40 ms.
        sim = Simulation(p, "torpor", fns, preload=False).run([(0.0, 0), (2.0, 0), (2.001, 1)])
        assert sum(d.swaps["host"] for d in sim.devices) == 2  # s, then b ahead of its run
        return [round(x, 6) for x in sim.tallies[0].latencies_ms]

    assert latencies(False) == [20.0, 20.0]
    # 1 ms alone, then half speed beside the prefetch: the 19 ms left take 38.
    assert latencies(True) == [20.0, 39.0]


def test_a_copy_shares_the_cores_and_a_model_may_hide_less_of_it() -> None:
    """A swap-in's copy thread is one more runnable activity: on one core it and the run it
    feeds go at half speed until the copy ends. A model's own pipeline_overlap replaces the
    topology's (bert hides less of its copy than resnet: its first operation needs the whole
    embedding table)."""

    def cold_ms(cores: int | None, overlap: float | None = None) -> float:
        big = dict(PROFILE["models"]["big"], **({"pipeline_overlap": overlap} if overlap is not None else {}))
        p = parse(dict(PROFILE, pipeline_overlap=1.0, models={"big": big}, **({"host_cores": cores} if cores else {})))
        # 400 MB at 10 GB/s: a 40 ms copy pipelined with a 20 ms execution.
        sim = Simulation(p, "torpor", [SimFunction("b", p.models["big"], 1000.0)], preload=False).run([(0.0, 0)])
        return round(sim.tallies[0].latencies_ms[0], 6)

    assert cold_ms(None) == 40.0
    assert cold_ms(1) == 80.0, "copy and execution share one core until the copy ends"
    assert cold_ms(None, overlap=0.0) == 60.0, "the model's overlap, not the topology's"
    assert cold_ms(None, overlap=0.5) == 50.0
    with pytest.raises(ValueError, match=r"models.big.pipeline_overlap: expected a fraction"):
        parse(dict(PROFILE, models={"big": dict(PROFILE["models"]["big"], pipeline_overlap=1.5)}))


def test_a_parse_on_oversubscribed_cores_takes_the_models_measured_slowdown() -> None:
    """While the host's cores are oversubscribed a parse takes the longer of cores / demand and the
    model's request_slowdown (measured beside every device executing); with a free core, neither."""

    def parse_ms(slowdown: float | None, cores: int) -> float:
        small = dict(PROFILE["models"]["small"], request_ms=4.0, **({"request_slowdown": slowdown} if slowdown else {}))
        p = parse(dict(PROFILE, pipeline_overlap=1.0, host_cores=cores, models={"small": small}))
        fns = [SimFunction(f"f{i}", p.models["small"], 1000.0) for i in range(2)]
        # f0 executes from 4 to 9 ms; f1's request arrives at 5 ms and is parsed beside it.
        sim = Simulation(p, "torpor", fns, record=True).run([(0.0, 0), (0.005, 1)])
        (_, arrived, began, _, _, _) = next(r for r in sim.served or [] if r[0] == 1)
        return round((began - arrived) * 1e3, 6)

    assert parse_ms(None, 2) == parse_ms(3.0, 2) == 4.0, "a core is free"
    assert parse_ms(None, 1) == 8.0, "processor sharing: two runnable on one core"
    assert parse_ms(3.0, 1) == 12.0, "the measured slowdown, more than processor sharing"

    def parse_ms_by_k(slowdowns: list[float], cores: int) -> float:
        small = dict(PROFILE["models"]["small"], request_ms=4.0, request_slowdowns=slowdowns, request_slowdown=9.0)
        p = parse(dict(PROFILE, pipeline_overlap=1.0, host_cores=cores, models={"small": small}))
        assert p.models["small"].request_slowdowns == tuple(slowdowns)
        fns = [SimFunction(f"f{i}", p.models["small"], 1000.0) for i in range(2)]
        sim = Simulation(p, "torpor", fns, record=True).run([(0.0, 0), (0.005, 1)])
        (_, arrived, began, _, _, _) = next(r for r in sim.served or [] if r[0] == 1)
        return round((began - arrived) * 1e3, 6)

    # Measured beside k executing devices: beside one, it applies with a core free, and it
    # replaces request_slowdown (9.0 here) altogether.
    assert parse_ms_by_k([1.5, 3.0], 2) == 6.0
    assert parse_ms_by_k([1.5, 3.0], 1) == 8.0, "processor sharing's 2x is more"
    with pytest.raises(ValueError, match=r"models.small.request_slowdowns: expected a list of factors >= 1"):
        parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], request_slowdowns=[0.9])}))
    with pytest.raises(ValueError, match="models.small.request_slowdown"):
        parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], request_slowdown=0.5)}))


def test_a_models_measured_spread_sets_its_execution_times() -> None:
    """exec_quantiles (run time / median at evenly spaced probabilities) replace the log-normal
    jitter for that model: a run is drawn within their range, their mean where many are drawn."""
    spread = [0.9, 1.0, 1.0, 1.2, 1.6]  # skewed: mean of the interpolated draws 1.1

    def executions(quantiles: list[float] | None, jitter: float = 0.0) -> list[float]:
        small = dict(PROFILE["models"]["small"], **({"exec_quantiles": quantiles} if quantiles else {}))
        p = parse(dict(PROFILE, models={"small": small}, pipeline_overlap=1.0, exec_jitter=jitter))
        assert p.models["small"].exec_quantiles == tuple(quantiles or ())
        sim = Simulation(p, "torpor", [SimFunction("f", p.models["small"], 1e6)], record=True)
        sim.run([(float(t), 0) for t in range(400)])
        return [(end - began) * 1e3 for _, _, began, end, _, _ in (sim.served or [])][1:]  # after the cold one

    drawn = executions(spread, jitter=0.5)  # the model's own spread wins over the profile's sigma
    assert min(drawn) >= 0.9 * 5.0 - 1e-9 and max(drawn) <= 1.6 * 5.0 + 1e-9
    assert sum(drawn) / len(drawn) == pytest.approx(1.1 * 5.0, rel=0.05)
    assert executions([1.0, 1.0]) == [pytest.approx(5.0)] * 399
    assert (
        dump(parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], exec_quantiles=spread)})), 1)[
            "models"
        ]["small"]["exec_quantiles"]
        == spread
    )
    for bad in ([1.0], [1.2, 1.0], [0.0, 1.0], "1.0"):
        with pytest.raises(ValueError, match=r"models.small.exec_quantiles: expected at least 2 factors > 0"):
            parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], exec_quantiles=bad)}))


def test_a_models_measured_request_spread_sets_each_requests_own_time() -> None:
    """request_quantiles: each request's time on the gateway is request_ms times a factor drawn
    from them (within their range, their mean where many are drawn), and draws no execution's."""
    spread = [0.5, 1.0, 1.0, 1.5, 2.5]  # the interpolated draws' mean: 1.25

    def requests(quantiles: list[float] | None) -> tuple[list[float], list[float]]:
        small = dict(PROFILE["models"]["small"], request_ms=4.0, exec_quantiles=[0.8, 1.0, 1.4])
        if quantiles:
            small["request_quantiles"] = quantiles
        p = parse(dict(PROFILE, models={"small": small}, pipeline_overlap=1.0))
        assert p.models["small"].request_quantiles == tuple(quantiles or ())
        sim = Simulation(p, "torpor", [SimFunction("f", p.models["small"], 1e6)], record=True)
        sim.run([(float(t), 0) for t in range(400)])
        served = (sim.served or [])[1:]  # after the cold one
        return [(began - arrived) * 1e3 for _, arrived, began, _, _, _ in served], [
            (end - began) * 1e3 for _, _, began, end, _, _ in served
        ]

    fixed, runs = requests(None)
    assert fixed == [pytest.approx(4.0)] * 399
    drawn, same_runs = requests(spread)
    assert min(drawn) >= 0.5 * 4.0 - 1e-9 and max(drawn) <= 2.5 * 4.0 + 1e-9
    assert sum(drawn) / len(drawn) == pytest.approx(1.25 * 4.0, rel=0.05)
    assert same_runs == runs  # a stream of its own: the executions drawn are the same
    small = dict(PROFILE["models"]["small"], request_quantiles=spread)
    assert dump(parse(dict(PROFILE, models={"small": small})), 1)["models"]["small"]["request_quantiles"] == spread
    for bad in ([1.0], [1.2, 1.0], [0.0, 1.0], "1.0"):
        with pytest.raises(ValueError, match=r"models.small.request_quantiles: expected at least 2 factors > 0"):
            parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], request_quantiles=bad)}))


def test_a_models_own_swap_latency_replaces_the_profiles_on_its_cold_runs() -> None:
    """swap_latency_ms per model (measured through a real server) is what its cold run pays beyond
    the pipelined copy, in place of the topology's; a warm run pays none."""

    def first_two(latency: float | None) -> list[float]:
        small = dict(PROFILE["models"]["small"], pipeline_overlap=1.0)
        if latency is not None:
            small["swap_latency_ms"] = latency
        p = parse(dict(PROFILE, models={"small": small}, swap_latency_ms=1.0, exec_jitter=0.0))
        assert p.models["small"].swap_latency_ms == latency
        sim = Simulation(p, "torpor", [SimFunction("f", p.models["small"], 1e6)], record=True, preload=False)
        sim.run([(1.0, 0), (2.0, 0)])
        return [round((end - began) * 1e3, 6) for _, _, began, end, _, _ in sim.served or []]

    # 100 MB at 10 GB/s: a 10 ms copy; the 5 ms run hides 5 ms of it whole (overlap 1).
    assert first_two(None) == [11.0, 5.0]  # the profile's 1 ms
    assert first_two(6.0) == [16.0, 5.0]
    assert first_two(0.0) == [10.0, 5.0]
    small = dict(PROFILE["models"]["small"], swap_latency_ms=6.0)
    assert dump(parse(dict(PROFILE, models={"small": small})), 1)["models"]["small"]["swap_latency_ms"] == 6.0
    for bad in (-1.0, "6", True):
        with pytest.raises(ValueError, match=r"models.small.swap_latency_ms: expected a number of milliseconds >= 0"):
            parse(dict(PROFILE, models={"small": dict(PROFILE["models"]["small"], swap_latency_ms=bad)}))


def test_drift_scales_executions_minute_by_minute() -> None:
    """A host whose speed wandered: each execution takes the factor of the minute it starts in."""
    p = parse(dict(PROFILE, pipeline_overlap=1.0))
    fns = [SimFunction("f", p.models["small"], 1e6)]
    sim = Simulation(p, "torpor", fns, record=True, drift=(1.0, 3.0))
    sim.run([(1.0, 0), (30.0, 0), (61.0, 0), (150.0, 0)])
    took = [round((end - began) * 1e3, 6) for _, _, began, end, _, _ in sim.served or []]
    assert took[1:] == [5.0, 15.0, 15.0]  # the last minute's factor holds after it
