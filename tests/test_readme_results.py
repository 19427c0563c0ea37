"""README's figures for the bundled checkpoint come from the report files (bench/readme_results.py)."""

from __future__ import annotations

import copy

import pytest

from bench import readme_results


def test_readme_blocks_are_what_the_reports_give():
    text = readme_results.README.read_text()
    assert readme_results.render_readme(text, readme_results.load_reports()) == text, (
        "README.md differs from the reports: run .venv/bin/python -m bench.readme_results")
    assert readme_results.main(["--check"]) == 0


def test_a_changed_report_changes_the_readme():
    reports = readme_results.load_reports()
    text = readme_results.README.read_text()
    changed = copy.deepcopy(reports)
    changed["int8"]["sts"]["test"]["spearman"] = 12.3456
    changed["int8"]["sts"]["test"]["cosine_by_gold"]["0-1"]["q75"] = -0.5
    new = readme_results.render_readme(text, changed)
    assert new != text and "**12.35**" in new and "below **-0.50**" in new


def test_missing_block_is_an_error():
    with pytest.raises(ValueError, match="generated:results"):
        readme_results.render_readme("# no blocks here\n", readme_results.load_reports())


def test_nli_variants_and_the_nli_teacher_come_from_their_reports():
    reports = readme_results.load_reports()
    assert reports["nli_variants"], "bench/results/nli_v2/variants.json lists no variant"
    text = readme_results.README.read_text()
    changed = copy.deepcopy(reports)
    name = next(iter(changed["nli_variants"]))
    changed["nli_variants"][name]["report"]["nli"]["snli_test"]["accuracy"] = 12.3456
    changed["teacher"]["nli"]["mnli_dev_matched"]["accuracy"] = 98.7654
    new = readme_results.render_readme(text, changed)
    assert "| 12.35 % |" in new and "98.77 %" in new


def test_recipe_probe_table_is_what_the_probe_folders_give():
    from bench import recipe_probes

    assert recipe_probes.main(["--check"]) == 0, "run .venv/bin/python -m bench.recipe_probes"
    assert "| `near_pairs_32_w1` | distill 750 | 82.02 |" in recipe_probes.table()
