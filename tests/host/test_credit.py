"""The credit scheduler in instructions: weights share a pCPU in proportion (Xen's credit scheduler:
cpu_weight in xl.cfg(5), "a domain with a weight of 512 will get twice as much CPU as a domain with a
weight of 256 on a contended host"), caps limit a vCPU to a percentage of one pCPU, an idle
neighbour's share goes to the busy ones. Shares are asserted exactly: they are counted in instructions."""
from host.credit import CreditScheduler, Entity


def run_window(scheduler: CreditScheduler, window: int, cost=lambda entity, budget: budget) -> None:
    """Run busy vCPUs for `window` instructions of pCPU time (a capped-out pCPU idles a period)."""
    ran = 0
    while ran < window:
        entity = scheduler.pick()
        if entity is None:
            ran += scheduler.period - scheduler.period_used
            scheduler.idle_period()
            continue
        used = cost(entity, scheduler.budget(entity))
        scheduler.charge(entity, used)
        ran += used


def test_weights_256_and_512_share_one_pcpu_one_to_two():
    scheduler = CreditScheduler(quantum=1000)
    light, heavy = Entity("light", weight=256), Entity("heavy", weight=512)
    scheduler.add(light)
    scheduler.add(heavy)
    run_window(scheduler, 300 * 1000)
    assert light.instructions + heavy.instructions == 300 * 1000
    assert heavy.instructions == 2 * light.instructions


def test_uneven_quanta_keep_the_share():
    """vCPUs that stop before their quantum ends (hypercalls, exits) are charged what they ran."""
    scheduler = CreditScheduler(quantum=1000)
    light, heavy = Entity("light", weight=256), Entity("heavy", weight=512)
    scheduler.add(light)
    scheduler.add(heavy)
    lengths = iter([300, 1000, 700, 1000, 50] * 10_000)
    run_window(scheduler, 3_000_000, cost=lambda entity, budget: min(budget, next(lengths)))
    assert abs(heavy.instructions / light.instructions - 2) < 0.02


def test_a_cap_is_honoured_against_a_busy_neighbour_and_alone():
    scheduler = CreditScheduler(quantum=1000)
    capped, other = Entity("capped", weight=512, cap=25), Entity("other")
    scheduler.add(capped)
    scheduler.add(other)
    run_window(scheduler, 300 * 1000)
    assert capped.instructions == 300 * 1000 // 4          # its weight alone would give it two thirds
    alone = CreditScheduler(quantum=1000)
    single = Entity("single", cap=50)
    alone.add(single)
    run_window(alone, 300 * 1000)
    assert single.instructions == 150 * 1000                # the pCPU idles the other half


def test_an_idle_neighbour_leaves_its_share_to_the_busy_one():
    scheduler = CreditScheduler(quantum=1000)
    busy, idle = Entity("busy"), Entity("idle", weight=4096, runnable=False)
    scheduler.add(busy)
    scheduler.add(idle)
    run_window(scheduler, 30_000)
    assert busy.instructions == 30_000 and idle.instructions == 0


def test_equal_weights_round_robin():
    scheduler = CreditScheduler(quantum=1000)
    entities = [Entity(f"d{i}") for i in range(3)]
    for entity in entities:
        scheduler.add(entity)
    run_window(scheduler, 90_000)
    assert [entity.instructions for entity in entities] == [30_000] * 3


def test_a_new_vcpu_is_under_until_it_has_run():
    """Xen makes a new vCPU UNDER with no credit (csched_alloc_udata) until its first debit, so a vCPU
    created or moved onto a pCPU runs at once - not after the next accounting, which beside a vCPU that
    runs a few instructions at each wake-up (a period ends only after a period's instructions) may
    never come. Its first quantum charged, it is OVER until then."""
    scheduler = CreditScheduler(quantum=1000)
    waker = Entity("waker")
    scheduler.add(waker)
    for _ in range(10):
        scheduler.charge(scheduler.pick(), 10)
    arrived = Entity("arrived")
    scheduler.add(arrived)
    picks = []
    for _ in range(6):
        chosen = scheduler.pick()
        picks.append(chosen.name)
        scheduler.charge(chosen, 10 if chosen is waker else 1000)
    assert picks == ["waker", "arrived"] + ["waker"] * 4 and scheduler.accountings == 1     # round robin among UNDER
