"""The docs stay true: the options reference lists every option of conf/ with its meaning, and the architecture
page names modules that exist and import."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import options_reference  # noqa: E402


def test_every_config_option_has_a_meaning_and_an_entry_in_the_options_reference():
    assert options_reference.undocumented() == []  # a comment beside each option in conf/
    committed = (ROOT / "docs/options.md").read_text().splitlines()
    generated = options_reference.generate(probe_errors=False).splitlines()
    rows = [line for line in generated if line.startswith("| `")]
    assert len(rows) > 150
    # each option's row (key, default, type, meaning) as conf/ says now; the committed page adds the probed error
    missing = [row for row in rows if not any(line.startswith(row[:-1]) for line in committed)]
    assert not missing, f"docs/options.md is out of date (python scripts/options_reference.py): {missing[:3]}"
    for key in ("format", "atol", "model", "adapt.source_ckpt", "schedule.layer_decay", "trainer.compile"):
        assert any(line.startswith(f"| `{key}` |") for line in committed), key


def test_the_options_reference_gives_the_one_line_error_of_a_wrong_value():
    probed = options_reference.probe("schedule", "layer_decay", "schedule.layer_decay", "0.65")
    assert probed == "`-1.0`: schedule.layer_decay=-1.0: use a number in (0, 1], e.g. 0.65"
    page = (ROOT / "docs/options.md").read_text()
    assert "UNCHECKED" not in page  # no wrong value crashes the checks instead of being named


def test_the_architecture_page_names_modules_that_exist_and_import():
    page = (ROOT / "docs/architecture.md").read_text()
    named = set(re.findall(r"\b([a-z_]+)\.py\b", page))
    src = ROOT / "src/transferlab"
    on_disk = {p.stem: p.relative_to(src).with_suffix("") for p in src.rglob("*.py") if p.name != "__init__.py"}
    assert len(on_disk) == len(list(src.rglob("*.py"))) - 2  # module names are unique (two __init__.py)
    assert named - set(on_disk) == set(), "the page names modules that do not exist"
    assert set(on_disk) - named == set(), "modules the page does not name"
    for stem in sorted(named):
        importlib.import_module("transferlab." + ".".join(on_disk[stem].parts))


def test_every_relative_link_of_the_readme_and_docs_leads_to_a_file():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/README.md"]
    broken = [
        (page.name, link)
        for page in pages
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
        if not link.startswith("http") and not (page.parent / link).exists()
    ]
    assert broken == []
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200  # a guide, the rest linked
