"""The credit scheduler of one physical CPU, in instructions: which vCPU runs the next quantum.

Owns the credit accounting of Xen's credit scheduler (xen/common/sched/credit.c; xl's
`sched-credit`, xl.cfg(5) cpu_weight and cap), with time measured in guest instructions instead of
milliseconds:
- a quantum is QUANTUM_INSTRUCTIONS (Xen: the 30 ms time slice); an accounting period is
  QUANTA_PER_PERIOD quanta (Xen: 30 ms, three 10 ms ticks);
- at each accounting, the period's instructions are shared out as credit to the active vCPUs in
  proportion to their weight (default 256, 1..65535); running costs a vCPU one credit per instruction;
- a vCPU with credit left is UNDER, and so is a new one until it has run (Xen's csched_alloc_udata makes
  a new vCPU UNDER with no credit; it turns OVER at its first debit); one that has used its credit up
  is OVER; the next quantum goes to an
  UNDER vCPU if there is one (round robin among equals), otherwise to an OVER one, so an idle
  neighbour's share is not wasted (credit is work-conserving);
- a cap (percent of one physical CPU, 0 = none) limits what a vCPU may run per period: once it has
  run cap% of the period it is parked until the next accounting, even if the CPU then idles;
- credit does not pile up: it is clipped to one period's worth, as Xen does for vCPUs that do not
  use theirs.
Invariant: the choice depends only on weights, caps, runnable states and the instruction counts
charged, never on the host clock, so the shares (in instructions) are reproducible; tests assert
them exactly. Which pCPU a vCPU may run on at all (hard affinity) is decided above, by the host.
"""
from __future__ import annotations

from dataclasses import dataclass

QUANTUM_INSTRUCTIONS = 1_000_000
QUANTA_PER_PERIOD = 3
DEFAULT_WEIGHT = 256


@dataclass(eq=False)
class Entity:
    """A vCPU as the credit scheduler sees it."""
    name: str
    weight: int = DEFAULT_WEIGHT
    cap: int = 0                       # percent of one pCPU per period; 0 = uncapped
    runnable: bool = True              # not blocked, not paused
    credit: int = 0
    used_in_period: int = 0            # instructions run since the last accounting
    instructions: int = 0              # instructions run in all


class CreditScheduler:
    """The run queue of one pCPU."""

    def __init__(self, quantum: int = QUANTUM_INSTRUCTIONS, quanta_per_period: int = QUANTA_PER_PERIOD):
        self.quantum = quantum
        self.period = quantum * quanta_per_period
        self.entities: list[Entity] = []           # round-robin order: the front runs first among equals
        self.period_used = 0                       # instructions run on this pCPU since the last accounting
        self.accountings = 0

    def parked(self, entity: Entity) -> bool:
        """A capped vCPU that has run its cap in this period."""
        return entity.cap > 0 and entity.used_in_period * 100 >= entity.cap * self.period

    def add(self, entity: Entity) -> None:
        """A new vCPU (created, or moved here from another pCPU): UNDER with no credit, as in Xen, until
        its first quantum is charged; so it takes its turn among the UNDER vCPUs at once (as OVER it
        could wait forever for the next accounting beside UNDER vCPUs that run a little at each wake-up,
        since a period ends only once the pCPU has run a period's instructions)."""
        self.entities.append(entity)

    def remove(self, entity: Entity) -> None:
        self.entities.remove(entity)

    def _account(self) -> None:
        """A new accounting period: share its instructions out as credit, in proportion to weight."""
        active = [entity for entity in self.entities if entity.runnable]
        total = sum(entity.weight for entity in active)
        for entity in self.entities:
            entity.used_in_period = 0
        for entity in active:
            entity.credit = min(entity.credit + self.period * entity.weight // total, self.period)
        self.period_used = max(0, self.period_used - self.period)
        self.accountings += 1

    def pick(self) -> Entity | None:
        """The vCPU to run the next quantum (None: none may run until the next period). The quantum
        ends early for a capped vCPU at its cap: `budget(entity)`."""
        if self.accountings == 0:
            self._account()
        candidates = [entity for entity in self.entities if entity.runnable and not self.parked(entity)]
        if not candidates:
            return None
        chosen = next((entity for entity in candidates if entity.credit > 0 or entity.instructions == 0),
                      candidates[0])
        self.entities.remove(chosen)
        self.entities.append(chosen)
        return chosen

    def budget(self, entity: Entity) -> int:
        """How many instructions `entity` may run now: a quantum, or less when the accounting period
        (Xen's accounting tick) or the vCPU's cap ends it sooner."""
        budget = min(self.quantum, self.period - self.period_used)
        if entity.cap:
            budget = min(budget, entity.cap * self.period // 100 - entity.used_in_period)
        return max(1, budget)

    def charge(self, entity: Entity, instructions: int) -> None:
        """`entity` ran `instructions`; a new period starts once the pCPU has run one period's worth."""
        entity.credit -= instructions
        entity.used_in_period += instructions
        entity.instructions += instructions
        self.period_used += instructions
        if self.period_used >= self.period:
            self._account()

    def idle_period(self) -> None:
        """Nothing may run (all blocked or parked at their cap): the host waited out the rest of the
        period, so a new one starts."""
        self.period_used = self.period
        self._account()
