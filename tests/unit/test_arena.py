from __future__ import annotations

from shared.arena import ALIGN, ArenaLayout, Slice, align_up


def test_first_fit_aligned_and_holes_reused() -> None:
    a = ArenaLayout(10 * ALIGN)
    s1 = a.allocate(100)
    s2 = a.allocate(3 * ALIGN)
    assert s1 == Slice(0, ALIGN) and s2 == Slice(ALIGN, 3 * ALIGN)
    a.release(s1)
    assert a.allocate(ALIGN + 1) == Slice(4 * ALIGN, 2 * ALIGN)  # the 1-page hole is too small
    assert a.allocate(ALIGN) == Slice(0, ALIGN)
    assert a.used == 6 * ALIGN


def test_refuses_what_does_not_fit_contiguously() -> None:
    a = ArenaLayout(4 * ALIGN)
    x = a.allocate(ALIGN)
    a.allocate(ALIGN)
    y = a.allocate(ALIGN)
    a.release(x)
    a.release(y)
    # 3 pages free in all, but the largest hole holds 2.
    assert a.largest_hole() == 2 * ALIGN
    assert a.allocate(3 * ALIGN) is None
    assert a.allocate(2 * ALIGN) is not None
    assert align_up(1) == ALIGN


def test_fits_after_releasing_plans_without_changing_state() -> None:
    a = ArenaLayout(3 * ALIGN)
    s = [a.allocate(ALIGN) for _ in range(3)]
    assert not a.fits(ALIGN)
    assert a.fits_after_releasing(2 * ALIGN, [s[1], s[2]])
    assert not a.fits_after_releasing(2 * ALIGN, [s[0], s[2]])
    assert a.used == 3 * ALIGN
