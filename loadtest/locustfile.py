"""Locust users that replay a serverless trace against a running torpor server.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 2 -r 2 -t 60s

(or `python -m loadtest.run`, which also writes a report). Open loop: requests fire at
the trace's timestamps whatever the server's latency. Each user claims the next arrival
from one shared schedule, sleeps until its timestamp and fires it in a greenlet of its
own without waiting for the answer, so a slow server sees requests pile up as it would
in production. The number of users only spreads that work; it does not set the load.
Run one locust process (no --processes or workers): each would replay the whole trace.

Environment:
  TORPOR_TRACE            an Azure Functions 2019 layout CSV (HashOwner,HashApp,HashFunction,Trigger,1..1440);
                          if unset, a trace is generated (shared.traces.generate) with:
  TORPOR_FUNCTIONS        trace functions (default: one per target; with TORPOR_TRACE, the first N rows)
  TORPOR_RATE             mean requests/s per trace function (default 0.5)
  TORPOR_SHAPE            lognormal (default): rates heavy-tailed across functions, bursty within
                          a minute (the two below); uniform: Torpor's evaluation workload (§7.3),
                          each function's count per minute uniform in TORPOR_RPM, spread evenly
  TORPOR_RPM              uniform: LOW:HIGH requests per minute per function (default 5:30)
  TORPOR_SIGMA            log-normal spread of rates across functions (default 1.0)
  TORPOR_BURSTINESS       0..1, minute-to-minute burstiness (default 0.5)
  TORPOR_SEED             trace, arrival times and payloads (default 0)
  TORPOR_MINUTES          trace minutes to replay (default 10; locust's --run-time may stop sooner)
  TORPOR_SCALE            every trace rate times this (default 1)
  TORPOR_TARGETS          comma list of deployed functions to invoke (default: all deployed)
  TORPOR_FUNCTION_PREFIX  only deployed functions whose name starts with this
  TORPOR_TOKEN            bearer token for invoke, if the functions need one
  TORPOR_REQUEST_LOG      CSV written with one line per request: start (unix s), function,
                          trace_function, ms, status, cold (x-torpor-cold), source
                          (x-torpor-source: resident, host or peer:N), late_ms (fired behind the trace),
                          queue_ms, swap_ms, exec_ms, read_ms, parse_ms, dispatch_ms, encode_ms,
                          gateway_ms (the server's own breakdown, its Server-Timing header)
  TORPOR_DRAIN            seconds to wait at the end for requests still in flight (default 10)
  TORPOR_ENCODING         json (default): tensors as JSON values; binary: Triton's binary tensor
                          extension (a JSON header, then the raw bytes), as tritonclient sends them

Trace functions map round-robin onto the targets (the deployed functions listed by
GET /v1/functions, in order). Each target gets one request body built from its input
spec: random values of the declared datatype, free dimensions 1 (batch) and 128 (others, shared.specs.FREE_DIM).
Requests are named by function, so locust's stats CSV has one row per function.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from gevent.pool import Group
from locust import HttpUser, events, task
from locust.exception import StopTest, StopUser
from urllib3 import PoolManager

from loadtest.replay import TIMED_PHASES, Replay, ReplayConfig, RequestLog, choose_targets, load_trace, server_timing

# Filled at each test start and read by every user (locust runs them all in this process).
STATE: dict[str, Any] = {"replay": None, "config": None, "log": None}


@events.test_start.add_listener
def _plan(environment: Any, **_: Any) -> None:
    try:
        cfg = ReplayConfig.from_env()
        headers = {"authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        response = httpx.get(f"{environment.host.rstrip('/')}/v1/functions", headers=headers, timeout=30)
        response.raise_for_status()
        targets = choose_targets(response.json()["functions"], cfg)
        replay = Replay(load_trace(cfg, len(targets)), targets, cfg.seed, encoding=cfg.encoding, even=cfg.even)
    except (ValueError, KeyError, httpx.HTTPError) as exc:
        # StopTest from here makes locust log the message and quit (headless) or stop (web UI).
        raise StopTest(f"torpor replay: {exc}") from exc
    _close_log()
    STATE.update(replay=replay, config=cfg, log=RequestLog(cfg.request_log) if cfg.request_log else None)


@events.test_stop.add_listener
def _close_log(**_: Any) -> None:
    if STATE["log"] is not None:
        STATE["log"].close()
        STATE["log"] = None


@events.request.add_listener
def _record(name: str, response_time: float, response: Any, context: dict[str, Any], **_: Any) -> None:
    log: RequestLog | None = STATE["log"]
    if log is None or "trace_function" not in context:
        return
    status = getattr(response, "status_code", 0) or 0
    headers = getattr(response, "headers", None) or {}
    ok = status == 200
    cold, source = (headers.get("x-torpor-cold", ""), headers.get("x-torpor-source", "")) if ok else ("", "")
    timing = server_timing(headers.get("server-timing", "")) if ok else {}
    parts = [timing.get(p, "") for p in TIMED_PHASES]
    log.write(
        (
            f"{context['fired']:.3f}",
            name,
            context["trace_function"],
            f"{response_time:.3f}",
            status,
            cold,
            source,
            f"{context['late_ms']:.1f}",
            *parts,
        )
    )


class TraceUser(HttpUser):
    """Fires the arrivals it claims at their timestamps; never waits for an answer before the next."""

    # Shared by all users: concurrent requests of a burst each need a connection, and the
    # default pool of 10 would open and discard the rest with a warning each.
    pool_manager = PoolManager(maxsize=256)

    def wait_time(self) -> float:
        # Not think time: the delay to the next claimed arrival, from the trace's clock.
        # Sleeping in locust's own wait lets a stop interrupt it at once.
        if self.pending is None:
            return 3600.0  # the trace is over; idle until locust's run time ends
        return max(0.0, self.replay.start + self.pending.at - time.time())

    def on_start(self) -> None:
        self.replay: Replay = STATE["replay"]
        if self.replay is None:
            raise StopUser()
        cfg: ReplayConfig = STATE["config"]
        self.drain_s = cfg.drain_s
        self.auth = {"authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        self.in_flight = Group()
        self.pending = self.replay.claim()

    def on_stop(self) -> None:
        # Requests fired before the run time ended still count: wait for their answers.
        self.in_flight.join(timeout=self.drain_s)
        self.in_flight.kill(block=False)

    @task
    def fire(self) -> None:
        arrival = self.pending
        if arrival is None:
            return
        late_s = time.time() - (self.replay.start + arrival.at)
        if late_s < 0:  # the first task runs before any wait
            return
        self.in_flight.spawn(self._invoke, arrival.function, arrival.trace_function, late_s)
        self.pending = self.replay.claim()

    def _invoke(self, name: str, trace_function: str, late_s: float) -> None:
        context = {"trace_function": trace_function, "fired": time.time(), "late_ms": 1000 * late_s}
        body = self.replay.bodies[name]
        with self.client.post(
            f"/v1/functions/{name}/invoke",
            data=body.content,
            headers={**body.headers, **self.auth},
            name=name,
            context=context,
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
