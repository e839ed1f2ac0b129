"""pyproject.toml: the license as an SPDX string, so installing prints no setuptools deprecation
warning (issue 20); the build requires a setuptools that reads it."""

import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_license_gives_no_deprecation_warning(monkeypatch):
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config import pyprojecttoml
    from setuptools.dist import Distribution

    if sys.version_info >= (3, 11):
        import tomllib

        meta = tomllib.loads((REPO / "pyproject.toml").read_text())
        assert meta["project"]["license"] == "MIT"
        assert (
            "setuptools>=77" in meta["build-system"]["requires"]
        )  # the first to read SPDX strings
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("this setuptools predates SPDX license strings")
    monkeypatch.chdir(REPO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = pyprojecttoml.apply_configuration(Distribution(), "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [
        str(w.message)[:200] for w in caught
    ]
    assert dist.metadata.license_expression == "MIT"
