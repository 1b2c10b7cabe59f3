"""Locust users that replay a serverless trace against a running torpor server.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 4 -r 4 -t 60s

(or `python -m loadtest.run`, which also writes a report). Open loop: the arrivals
follow the trace's timestamps whatever the server's latency -- each user owns every
N-th arrival, sleeps until its time and fires it in a greenlet of its own -- so a slow
server sees requests pile up, as it would in production, instead of a closed loop
politely waiting for it.

Environment:
  TORPOR_TRACE        an Azure Functions 2019 layout CSV (HashOwner,HashApp,HashFunction,Trigger,1..1440);
                      if unset, a trace is generated (shared.traces.generate) with:
  TORPOR_FUNCTIONS    trace functions (default: as many as the server has deployed)
  TORPOR_RATE         mean requests/s per trace function (default 0.5)
  TORPOR_SIGMA        spread of rates across functions (default 1.0)
  TORPOR_BURSTINESS   0..1 (default 0.5)
  TORPOR_MINUTES      trace minutes to replay (default 10; the run time may stop it sooner)
  TORPOR_SEED         (default 0)
  TORPOR_TARGETS      comma list of deployed functions to invoke (default: all); trace functions
                      are mapped onto them round-robin
  TORPOR_TOKEN        bearer token for invoke, if the functions need one
  TORPOR_REQUEST_LOG  CSV to append one line per request: time, function, ms, status, cold

Payloads are built from each function's input spec: random values of its datatype,
free dimensions 1 (batch) and 16 (others). Requests are named by function, so locust's
stats CSV has one row per function.
"""

from __future__ import annotations

import csv
import os
import time
from typing import Any

import gevent
import numpy as np
from locust import HttpUser, events, task
from locust.exception import StopUser

from shared import traces
from shared.specs import random_inputs

PLAN: dict[str, Any] = {}  # filled once at test start, read by every user


def _payload(spec: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, Any]:
    return {"inputs": random_inputs(spec, batch=1, free=16, rng=rng)}


def _trace(n_default: int) -> traces.Trace:
    env = os.environ.get
    minutes = int(env("TORPOR_MINUTES", "10"))
    if env("TORPOR_TRACE"):
        return traces.read_azure_csv(env("TORPOR_TRACE", ""), minutes=minutes)
    return traces.generate(
        int(env("TORPOR_FUNCTIONS", str(n_default))),
        minutes,
        float(env("TORPOR_RATE", "0.5")),
        float(env("TORPOR_SIGMA", "1.0")),
        float(env("TORPOR_BURSTINESS", "0.5")),
        int(env("TORPOR_SEED", "0")),
    )


@events.test_start.add_listener
def _plan(environment: Any, **_: Any) -> None:
    import httpx

    listing = httpx.get(f"{environment.host.rstrip('/')}/v1/functions", timeout=30).json()["functions"]
    wanted = [w for w in os.environ.get("TORPOR_TARGETS", "").split(",") if w]
    functions = [f for f in listing if not wanted or f["name"] in wanted]
    if not functions:
        raise RuntimeError(f"no deployed function to invoke (TORPOR_TARGETS={wanted or 'all'})")
    trace = _trace(len(functions))
    rng = np.random.default_rng(int(os.environ.get("TORPOR_SEED", "0")))
    targets = [functions[i % len(functions)]["name"] for i in range(len(trace.functions))]
    PLAN.update(
        start=time.time() + 1.0,  # every user starts the clock together
        arrivals=[(t, targets[fi]) for t, fi in trace.arrivals(seed=int(os.environ.get("TORPOR_SEED", "0")))],
        payloads={f["name"]: _payload(f["inputs"], rng) for f in functions},
        users=0,
    )
    log = os.environ.get("TORPOR_REQUEST_LOG")
    if log:
        with open(log, "w", newline="") as fh:
            csv.writer(fh).writerow(["time", "function", "ms", "status", "cold"])


@events.request.add_listener
def _record(name: str, response_time: float, response: Any, exception: Any, **_: Any) -> None:
    log = os.environ.get("TORPOR_REQUEST_LOG")
    if not log or response is None:
        return
    status = getattr(response, "status_code", 0) or 0
    cold = (response.headers or {}).get("x-torpor-cold", "") if status == 200 else ""
    with open(log, "a", newline="") as fh:
        csv.writer(fh).writerow([f"{time.time():.3f}", name, f"{response_time:.3f}", status, cold])


class TraceUser(HttpUser):
    """Fires its share of the trace's arrivals at their timestamps."""

    def on_start(self) -> None:
        self.index = PLAN["users"]
        PLAN["users"] += 1
        token = os.environ.get("TORPOR_TOKEN")
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    @task
    def replay(self) -> None:
        users = max(1, self.environment.runner.target_user_count if self.environment.runner else 1)
        for t, name in PLAN["arrivals"][self.index :: users]:
            delay = PLAN["start"] + t - time.time()
            if delay > 0:
                gevent.sleep(delay)
            gevent.spawn(self._invoke, name)
        gevent.sleep(3600)  # the trace is over: idle until locust's run time ends
        raise StopUser()

    def _invoke(self, name: str) -> None:
        with self.client.post(
            f"/v1/functions/{name}/invoke",
            json=PLAN["payloads"][name],
            headers=self.headers,
            name=name,
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
