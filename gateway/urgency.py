"""Which waiting function the scheduler serves first, and when a freeing device serves another.

Pure functions over the scheduler's state (gateway.scheduler.Scheduler), split out of it
to keep the policy's parts readable one at a time.

Order ("budget", the default): earliest deadline first, with two exceptions. A function
whose next request can no longer make its deadline goes after every one that still can
(served first, it would make those late too). A function far behind its SLO in the window
(RRC above `give_up`, 200: four requests beyond what its percentile allows, at p98) goes
after those that are not, so under overload the misses gather on few functions instead of
pushing every one just past its percentile; at 50 (one request beyond) a burst's few misses
put a function last for the rest of the window, and it never caught up. Within that, a function
with misses to spare (its window would still meet the percentile after one more) yields
`spare_ms` to those with none: a conflict costs the function that can afford it.

Order "rrc" is Torpor's: functions above a tuned RRC threshold first, then by deadline, and
those above `give_up` last.

Warm first: when the head of the order would run on device d, but a less urgent request
has its model warm on d alone, d serves that one if the head can still make its deadline
on the next device to free up. Without it, a model held by one device (Bert-qa, 1.34 GB,
too big to copy around) waits behind requests any device could serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.devicestate import FunctionState, Plan

if TYPE_CHECKING:
    from gateway.scheduler import Scheduler


def order(s: Scheduler) -> list[str]:
    """Functions with requests waiting, the most urgent first."""
    if len(s._pending) == 1:
        return list(s._pending)  # a quiet node's common case: nothing to weigh (a key only trims windows)
    if not s.policy.slo_order:
        return sorted(s._pending, key=lambda n: (s.functions[n].queue[0].arrived, n))
    now, policy, threshold = s.clock(), s.policy, s.tuner.threshold
    spare_s = policy.spare_ms / 1e3
    functions = s.functions

    def urgency(name: str) -> tuple[bool, int, float, str]:
        state = functions[name]
        head = state.queue[0]
        hopeless = policy.defer_late and now + state.exec.at(1) / 1e3 > head.deadline
        rrc = state.slo.rrc(now)
        if policy.order == "rrc":
            tier = 2 if rrc > policy.give_up else 0 if rrc > threshold else 1
            return (hopeless, tier, head.deadline, name)
        key = head.deadline + (spare_s if state.slo.spare(now) >= 1 else 0.0)
        return (hopeless, int(rrc > policy.give_up), key, name)

    return sorted(s._pending, key=urgency)


def warm_elsewhere(s: Scheduler, state: FunctionState, plan: Plan, rest: list[str]) -> str | None:
    """The function to serve on `plan`'s device instead of `state` (see "Warm first"), or None."""
    d, now = plan.device, s.clock()
    if not plan.cold:
        return None  # the head is warm here itself
    for name in rest:
        other = s.functions[name]
        if not other.queue:
            continue  # emptied earlier in this pass (drop_late)
        model = other.info.model_id
        r = d.resident.get(model)
        if r is None or r.loading:
            continue
        if any(e is not d and e.idle and model in e.resident and not e.resident[model].loading for e in s.devices):
            continue  # another idle device holds it warm too
        if now + other.exec.at(1) / 1e3 > other.queue[0].deadline:
            continue  # cannot make it anyway
        busy = [s._remaining_ms(e) for e in s.devices if e.online and e is not d and not e.idle]
        next_free = min(busy, default=float("inf"))
        service = s._service_ms(state, plan, 1)
        return name if now + (next_free + service) / 1e3 <= state.queue[0].deadline else None
    return None
