"""The ``allow_zombies`` marker: declared, parsed and checked in one place.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import pytest

MARKER = "allow_zombies"
MARKER_LINE = (
    f"{MARKER}(reason=None): let this test leave zombie (and running) child "
    "processes; pytest-nozombies still cleans them up afterwards where that "
    "disturbs nobody, and never blames them on other tests."
)


def parse(mark: pytest.Mark) -> str | None:
    """Return the marker's reason (positional, as ``skip`` and ``xfail`` take
    it, or ``reason=``), or raise ``ValueError`` for wrong arguments."""
    usage = f'use @pytest.mark.{MARKER}("why") or @pytest.mark.{MARKER}(reason="why")'
    unknown = set(mark.kwargs) - {"reason"}
    if unknown:
        raise ValueError(
            f"got unexpected keyword argument(s) {', '.join(sorted(unknown))}; "
            f"the only one accepted is reason; {usage}"
        )
    if len(mark.args) > 1 or (mark.args and "reason" in mark.kwargs):
        raise ValueError(
            f"takes one reason, got {mark.args!r} {mark.kwargs!r}; {usage}"
        )
    reason = mark.args[0] if mark.args else mark.kwargs.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"reason must be a string, got {reason!r}")
    return reason


class AllowedTests:
    """The node ids of the tests marked ``allow_zombies``, checked as collected.

    A marker on a class or module is parsed once for that node, not again
    for each of its tests: collection pays one look-up per test.
    """

    def __init__(self) -> None:
        self.nodeids: set[str] = set()
        #: Verdict per collection node (by id, the node kept alive beside it).
        self._nodes: dict[int, tuple[pytest.Item | pytest.Collector, bool]] = {}

    def check(self, item: pytest.Item) -> None:
        """Note whether ``item`` is allowed; ``pytest.UsageError`` if misused."""
        own = _marked(item)
        parent = item.parent
        if own or (parent is not None and self._node_allowed(parent)):
            self.nodeids.add(item.nodeid)

    def _node_allowed(self, node: pytest.Item | pytest.Collector) -> bool:
        known = self._nodes.get(id(node))
        if known is not None:
            return known[1]
        parent = node.parent
        allowed = _marked(node) or (parent is not None and self._node_allowed(parent))
        self._nodes[id(node)] = (node, allowed)
        return allowed


def allows(node: pytest.Item | pytest.Collector) -> bool:
    """Whether ``node`` or a node above it is marked (already checked)."""
    return node.get_closest_marker(MARKER) is not None


def _marked(node: pytest.Item | pytest.Collector) -> bool:
    """Whether ``node`` itself carries the marker (its parents not asked)."""
    marked = False
    for mark in node.own_markers:
        if mark.name != MARKER:
            continue
        marked = True
        try:
            parse(mark)
        except ValueError as exc:
            raise pytest.UsageError(
                f"pytest-nozombies: @pytest.mark.{MARKER} on {node.nodeid} {exc}"
            ) from None
    return marked
