"""The ``stackfs vm matrix`` cells as pytest items, to spread them with pytest-xdist (issue 14).

One item per kernel x scenario; each boots its kernel once and runs the scenario's variants in
it (:func:`stackfs.vm.matrix.run_cell`). Nothing here schedules: pytest-xdist hands the items
to its workers, and a CI matrix gives each job one cell with ``-k``::

    STACKFS_VM_MATRIX_KERNELS=6.1,6.12 pytest -n 2 tests/vm/test_vm_matrix_cells.py
    STACKFS_VM_MATRIX_KERNELS=6.12 pytest tests/vm/test_vm_matrix_cells.py -k nfs-atomic-open

Environment: ``STACKFS_VM_MATRIX_KERNELS`` (required, else every item is skipped),
``STACKFS_VM_MATRIX_SCENARIOS`` (default: every registered scenario),
``STACKFS_VM_MATRIX_VARIANT`` (default: every variant), ``STACKFS_VM_MATRIX_OUT`` (default
``reports/vm-matrix-cells``: ``SCENARIO/KERNEL/`` holds the JSON, JUnit XML and dmesg).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stackfs.vm import kernels, matrix

KERNELS = [k for k in os.environ.get("STACKFS_VM_MATRIX_KERNELS", "").split(",") if k]
SCENARIOS = matrix.scenario_names(os.environ.get("STACKFS_VM_MATRIX_SCENARIOS") or None)
OUT = Path(os.environ.get("STACKFS_VM_MATRIX_OUT") or "reports/vm-matrix-cells")
CELLS = [pytest.param(k, s, id=f"{k}-{s}") for k in KERNELS for s in SCENARIOS] or [
    pytest.param(
        None,
        None,
        id="no-kernels",
        marks=pytest.mark.skip(
            reason="set STACKFS_VM_MATRIX_KERNELS=K1,K2 to run the matrix cells"
        ),
    )
]

pytestmark = [pytest.mark.mount, pytest.mark.timeout(3600)]


@pytest.mark.parametrize(("kernel", "scenario"), CELLS)
def test_cell(kernel: str, scenario: str, record_property) -> None:
    k = kernels.resolve(kernel)
    cell = matrix.run_cell(
        k,
        [scenario],
        OUT / scenario,
        variant=os.environ.get("STACKFS_VM_MATRIX_VARIANT") or None,
        timeout=3000,
    )
    record_property("kernel", k.release)
    for r in cell.rows:
        record_property(f"{r.case}/{r.variant}", f"expected {r.expected}, observed {r.observed}")
    assert cell.error is None, cell.error
    bad = [
        f"{r.case}/{r.variant}: expected {r.expected}, observed {r.observed}"
        for r in cell.rows
        if not r.matched
    ]
    assert not bad, f"{k.release} {scenario}: " + "; ".join(bad)
