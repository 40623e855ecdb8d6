"""
Saver selection by ΔC = c_s - r*, on the session's trained detectors (tests/conftest.py): the
trained saver, and the trained base offered as a saver of its own. That second candidate has known
answers: it costs what the base costs (c_s = 1) and its outputs are the base's, so routing never
loses AP (r* = 1) and ΔC = 0.
"""

import os

import pytest

from tinysaver_det.engine.saver_selection import format_ranking, rank_savers


def test_rank_savers_orders_by_delta_c(tmp_path, trained_detectors):
    td = trained_detectors
    calib = f"{td.prefix}_calib"
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.TINYSAVER.BASE.WEIGHTS",
        td.weights["base"],
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES",
        "1",
        "DATASETS.TEST",
        f"('{calib}',)",
    ]
    candidates = [(td.configs[p], td.weights[p]) for p in ("saver", "base")]
    rows = rank_savers(td.configs["tinysaver"], candidates, calib, opts)
    assert len(rows) == 2
    assert [r["delta_c"] for r in rows] == sorted(r["delta_c"] for r in rows)
    by_config = {r["saver_config"]: r for r in rows}
    as_base = by_config[td.configs["base"]]
    assert as_base["c_s"] == pytest.approx(1.0) and as_base["r_star"] == 1.0
    assert as_base["delta_c"] == pytest.approx(0.0)
    assert as_base["saver_AP"] == pytest.approx(as_base["base_AP"])
    saver = by_config[td.configs["saver"]]
    assert saver["base_AP"] > 0  # trained detectors: r* is not 1 merely because every AP is 0
    assert saver["saver_AP"] < saver["base_AP"]
    assert 0.0 <= saver["r_star"] < 1.0  # exiting every image loses the base's AP
    assert 0.0 < saver["c_s"] < 0.5
    assert saver["delta_c"] == pytest.approx(saver["c_s"] - saver["r_star"])
    table = format_ranking(rows)
    assert "ΔC" in table and os.path.basename(td.configs["saver"]) in table
