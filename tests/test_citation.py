"""CITATION.cff is valid CFF 1.2.0 (cffconvert's schema check), cites the reproduced paper, and
the README carries a BibTeX entry for both."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def validate(path: Path) -> subprocess.CompletedProcess:
    cffconvert = Path(sys.executable).parent / "cffconvert"  # installed with requirements.txt
    return subprocess.run([str(cffconvert), "--validate", "-i", str(path)], capture_output=True, text=True)


def test_citation_file_is_valid_and_cites_the_paper(tmp_path):
    result = validate(ROOT / "CITATION.cff")
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "CITATION.cff").read_text()
    assert "How to Guess a Gradient" in text and "2312.04709" in text
    broken = tmp_path / "CITATION.cff"  # the check can fail: drop a required field
    broken.write_text(text.replace("cff-version: 1.2.0\n", ""))
    assert validate(broken).returncode != 0


def test_readme_has_bibtex_for_the_book_and_the_paper():
    readme = (ROOT / "README.md").read_text()
    assert "```bibtex" in readme
    assert "@software{" in readme and "@article{singhal2023guess" in readme and "2312.04709" in readme
