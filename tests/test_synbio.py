"""SynBio: real value lists, unique seeded people, per-exposure reshuffling, queries, errors."""

import collections
import re

import ml_collections
import numpy as np
import pytest

from phasemix.base import validation
from phasemix.data import synbio, tokenizer
from phasemix.data.synbio import ATTRIBUTES


def config(**overrides):
    cfg = synbio.default_config()
    cfg.num_people = 300
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def bio():
    return synbio.make(config())


@pytest.fixture(scope="module")
def tok(bio):
    web = ["The cat sat on the mat.", "It was born in a small town, and studied music."]
    return tokenizer.build(web, vocab_size=10_000, required_words=bio.required_words())


def test_value_lists_come_from_the_packages():
    first = synbio.census_first_names()
    assert len(first) == 5163  # 4,275 female + 1,219 male census names, 331 on both lists
    assert dict(first)["James"] == "male" and dict(first)["Mary"] == "female"
    assert len(synbio.census_last_names()) == 88_799
    assert len(synbio.us_cities()) == 3405 and "Austin, TX" in synbio.us_cities()
    assert len(synbio.us_universities()) == 1486
    assert "Massachusetts Institute of Technology" in synbio.us_universities()
    assert len(synbio.companies()) == 1145
    assert not any(c.endswith(".") for c in synbio.companies())
    assert len(set(synbio.MAJORS)) == len(synbio.MAJORS) == 100


def test_default_counts_are_the_papers(bio):
    assert len(bio) == 300
    assert {k: len(v) for k, v in bio.pools.items()} == {
        "first": 400, "middle": 400, "last": 1000, "birth_city": 200, "university": 300,
        "major": 100, "employer": 263}
    assert not set(bio.pools["first"]) & set(bio.pools["middle"])
    assert all(len(synbio.TEMPLATES[a]) == 5 for a in ATTRIBUTES)


def test_people_have_unique_names_and_values_from_the_pools(bio):
    names = [p.name for p in bio.people]
    assert len(set(names)) == len(names)
    for person in bio.people:
        first, middle, last = person.name.split(" ")
        assert first in bio.pools["first"] and middle in bio.pools["middle"]
        assert last in bio.pools["last"]
        for attribute in ATTRIBUTES[1:]:
            assert person.value(attribute) in bio.pools[attribute]
        month, day, year = re.fullmatch(r"(\w+) (\d+), (\d+)", person.value("birth_date")).groups()
        assert month in synbio.MONTHS and 1 <= int(day) <= 28 and 1900 <= int(year) <= 2099
    # Values are spread over their pools, not stuck on a few.
    assert len({p.value("major") for p in bio.people}) > 90


def test_seeded_and_nested(bio):
    again = synbio.make(config())
    assert again.people == bio.people and again.biography(7, 3) == bio.biography(7, 3)
    assert synbio.make(config(seed=1)).people[0] != bio.people[0]
    # Fewer people are a prefix of more, and a smaller list a prefix of a larger one.
    assert synbio.make(config(num_people=40)).people == bio.people[:40]
    assert synbio.make(config(num_cities=50)).pools["birth_city"] == bio.pools["birth_city"][:50]


def test_every_full_name_can_be_used():
    small = synbio.make(config(num_first_names=2, num_middle_names=2, num_last_names=3,
                               num_people=12))
    assert len({p.name for p in small.people}) == 12


def test_exposures_reshuffle_and_redraw_templates_reproducibly(bio):
    bios = [bio.biography(5, e) for e in range(40)]
    assert len(set(bios)) > 35
    assert bios == [bio.biography(5, e) for e in range(40)]  # random access, any order
    assert bio.render([5] * 40, range(40)) == [bio.sentences(5, e) for e in range(40)]
    person = bio.people[5]
    firsts, used = collections.Counter(), collections.defaultdict(set)
    for e in range(200):
        sentences = bio.sentences(5, e)
        assert len(sentences) == 5
        for attribute in ATTRIBUTES:
            [sentence] = [s for s in sentences if person.value(attribute) in s]
            [j] = [j for j, t in enumerate(synbio.TEMPLATES[attribute])
                   if t.format(name=person.name, **{attribute: person.value(attribute)})
                   == sentence]
            used[attribute].add(j)
            firsts[attribute] += sentences[0] == sentence
    assert all(used[a] == set(range(5)) for a in ATTRIBUTES)  # every template gets drawn
    assert all(firsts[a] > 20 for a in ATTRIBUTES)  # every attribute gets to go first


def test_every_value_appears_in_its_biography(bio):
    for i, person in enumerate(bio.people):
        text = bio.biography(i, i % 7)
        assert text.count(person.name) == 5
        for attribute in ATTRIBUTES:
            assert person.value(attribute) in text


def test_prompts_are_prefixes_of_rendered_sentences(bio):
    people = range(20)
    queries = bio.queries(people)
    assert len(queries) == 20 * 5 * 5
    rendered = {i: [s for e in range(100) for s in bio.sentences(i, e)] for i in people}
    for q in queries:
        assert q.prompt.startswith(bio.people[q.person].name) and not q.prompt.endswith(" ")
        assert q.value == bio.people[q.person].value(q.attribute)
        assert any(s.startswith(f"{q.prompt} {q.value}") for s in rendered[q.person])
    assert [q.template for q in bio.queries([0], templates=[0])] == [0] * 5
    assert bio.queries([0], templates=[0])[0].prompt == f"{bio.people[0].name} was born on"


def test_values_tokenize_without_unk_and_identically_in_context(bio, tok):
    for q in bio.queries(range(50), templates=[0, 2]):
        prompt_ids, value_ids = tok.token_ids(q.prompt), tok.token_ids(q.value)
        assert (value_ids != tokenizer.UNK).all() and (prompt_ids != tokenizer.UNK).all()
        np.testing.assert_array_equal(tok.token_ids(f"{q.prompt} {q.value}."),
                                      np.concatenate([prompt_ids, value_ids, tok.token_ids(".")]))
    for i in range(50):
        ids = tok.token_ids(bio.biography(i, 0))
        assert (ids != tokenizer.UNK).all()
        assert (tok.token_ids(bio.compact(i)) != tokenizer.UNK).all()
        value_ids = tok.token_ids(bio.people[i].value("university")).tolist()
        windows = [ids[k:k + len(value_ids)].tolist() for k in range(len(ids))]
        assert value_ids in windows


def test_required_words_fit_a_small_vocabulary(bio):
    required = bio.required_words()
    assert {"was", "born", "bio", "she", "his", "october", "28", "2099", ","} <= set(required)
    assert tokenizer.words(bio.people[0].name)[0] in required
    # From the pools, not the people: N does not change the vocabulary.
    assert synbio.make(config(num_people=10)).required_words() == required


def test_compact_form(bio):
    p = bio.people[3]
    assert bio.compact(3) == (
        f"Bio: N {p.name} B {p.value('birth_date')} C {p.value('birth_city')} "
        f"U {p.value('university')} M {p.value('major')} E {p.value('employer')}")


def test_pronouns_name_the_person_once():
    bio = synbio.make(config(num_people=20, pronouns=True))
    for i, person in enumerate(bio.people):
        sentences = bio.sentences(i, 1)
        assert sentences[0].startswith(person.name)
        subject, possessive = synbio.PRONOUNS[person.gender]
        assert all(s.split(" ")[0] in (subject, possessive) for s in sentences[1:])
        assert all(person.name not in s for s in sentences[1:])


def test_uniform_draws_show_everyone_once_per_epoch(bio):
    person_D, exposure_D = bio.draws(0, 3 * len(bio), seed=0)
    assert np.bincount(person_D).tolist() == [3] * len(bio)
    np.testing.assert_array_equal(exposure_D, np.repeat([0, 1, 2], len(bio)))
    part_person, part_exposure = bio.draws(250, 700, seed=0)  # random access
    np.testing.assert_array_equal(part_person, person_D[250:700])
    np.testing.assert_array_equal(part_exposure, exposure_D[250:700])
    assert not np.array_equal(bio.draws(0, 300, seed=1)[0], person_D[:300])


def test_power_law_popularity():
    bio = synbio.make(config(num_people=100, popularity_exponent=1.0))
    assert np.isclose(bio.popularity.sum(), 1) and np.all(np.diff(bio.popularity) < 0)
    assert np.isclose(bio.popularity[0] / bio.popularity[9], 10)
    person_D, exposure_D = bio.draws(0, 20_000, seed=0)
    counts = np.bincount(person_D, minlength=100) / 20_000
    assert abs(counts[0] - bio.popularity[0]) < 0.01 and counts[0] > 5 * counts[50]
    np.testing.assert_array_equal(exposure_D, np.arange(20_000))
    np.testing.assert_array_equal(bio.draws(5000, 6000, seed=0)[0], person_D[5000:6000])


@pytest.mark.parametrize("overrides, flag", [
    (dict(num_first_names=2, num_middle_names=2, num_last_names=3, num_people=13),
     "synbio.num_people"),
    (dict(num_people=0), "synbio.num_people"),
    (dict(num_cities=10**6), "synbio.num_cities"),
    (dict(num_majors=101), "synbio.num_majors"),
    (dict(num_last_names=0), "synbio.num_last_names"),
    (dict(num_middle_names=5000), "synbio.num_middle_names"),
    (dict(min_birth_year=2000, max_birth_year=1999), "synbio.max_birth_year"),
    (dict(popularity_exponent=-1.0), "synbio.popularity_exponent"),
])
def test_bad_counts_name_their_flag(overrides, flag):
    with pytest.raises(validation.ConfigError, match=rf"^--config\.{re.escape(flag)}="):
        synbio.make(config(**overrides))


@pytest.mark.parametrize("attribute, templates, message", [
    ("major", ("{name} majored in something.",), "exactly one {name} and one {major}"),
    ("major", ("{name} majored in {major} and {major}.",), "exactly one"),
    ("major", ("{name} majored in {major} at {university}.",), "exactly one"),
    ("major", ("{major} was what {name} majored in.",), "must come before the value"),
    ("major", ("{name} studied {major}.",), "prefix of the university template"),
    ("major", ("{name} majored in {major.",), "not a format string"),
    ("major", (), "at least one template"),
])
def test_bad_templates_name_their_flag(attribute, templates, message):
    cfg = config()
    cfg.templates[attribute] = templates
    with pytest.raises(validation.ConfigError,
                       match=rf"^--config\.synbio\.templates\.{attribute}.*{re.escape(message)}"):
        synbio.make(cfg)


def test_pronoun_templates_must_start_with_the_name():
    cfg = config(pronouns=True)
    cfg.templates.employer = ("In those years {name} worked for {employer}.",)
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.synbio\.templates\.employer.*must start with \{name\}"):
        synbio.make(cfg)
    cfg.pronouns = False
    assert "In those years " in synbio.make(cfg).biography(0, 0)


def test_a_lone_template_string_is_one_template():
    raw = config(num_people=5).to_dict()  # a config built from a dict may hold a string
    raw["templates"]["major"] = "{name} majored in {major}."
    bio = synbio.make(ml_collections.ConfigDict(raw))
    assert bio.templates["major"] == ("{name} majored in {major}.",)
    assert f"{bio.people[0].name} majored in {bio.people[0].value('major')}." in bio.sentences(0, 0)


def test_more_people_than_the_memory_holds_are_refused_before_building(monkeypatch):
    monkeypatch.setattr(validation, "physical_memory_bytes",
                        lambda: 299 * synbio.BYTES_PER_PERSON)
    with pytest.raises(validation.ConfigError, match=r"^--config\.synbio\.num_people=300: "
                                                     r"300 people would take at least"):
        synbio.validate(config())
    synbio.validate(config(num_people=299))
