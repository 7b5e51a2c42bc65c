"""scripts/bench_serve.py (issue 16's serving benchmark): a tiny full run, so the script CI never times still runs."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_serve.py"
_spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.slow
def test_a_tiny_bench_serve_run_writes_its_table_and_json(tiny_digits_artifact, tmp_path):
    r = bench.main(["--artifact", str(tiny_digits_artifact), "--steps", "2", "--repeats", "1", "--clients", "3",
                    "--requests", "2", "--wait-ms", "50", "--json", str(tmp_path / "r.json"),
                    "--md", str(tmp_path / "r.md")])
    assert json.loads((tmp_path / "r.json").read_text())["batching_speedup"] == pytest.approx(r["batching_speedup"])
    assert r["unbatched"]["rows_per_batch"] == 1.0   # --batch-size 1: every request its own batch
    for run in (r["batched"], r["unbatched"], *r["waits"].values()):
        assert run["requests"] == 6 and run["samples_per_s"] > 0 and run["p50_s"] <= run["p99_s"]
    assert r["overhead"]["direct_s"] > 0 and r["overhead"]["served_s"] > 0
    md = (tmp_path / "r.md").read_text()
    assert "micro-batching, --batch-wait-ms 50" in md and "no batching (--batch-size 1)" in md
