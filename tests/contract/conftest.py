"""Print the schemathesis request counts at the end of every run that made them (CI's log too)."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.contract.test_schemathesis import COUNTS, ROLES

    if COUNTS:
        roles = ", ".join(f"{role} {COUNTS[role]}" for role in ROLES if role in COUNTS)
        total = sum(COUNTS.get(role, 0) for role in ROLES)
        terminalreporter.write_line(
            f"schemathesis generated requests: {roles}; total {total} (node, unsigned: {COUNTS.get('node', 0)})"
        )
