"""Question worlds: fictional entities, Wikipedia-style passages about them, and multi-hop questions.

In the spirit of ReSeek's FictionalHot, every name and fact is invented from a seed,
so no model can know an answer from pre-training: a question is answerable only
through retrieval (contamination-free by construction).

A world has five kinds of entities, one passage each:

    person   born in a city, born in a year, an occupation, maybe a mentor (a person)
    city     in a country, founded in a year
    country  has a capital (one of its cities)
    org      founded by a person, in a year, headquartered in a city
    work     written by a person, published by an org, in a year

Every fact is stated only in its subject's passage, so a question that follows h
relations ("Where was the founder of Venmira Press born?") needs h passages: the
`gold_doc_ids` of the question, one per hop, in order. Distractors make retrieval
imperfect: namesakes (people sharing a surname, and an occupation or a birth city
or year with the original) and organisations named after their founders.

With `by_occupation`, a question names a person as "Rutaru the novelist" and each
namesake shares the surname alone, with another occupation: a search for the surname
finds either person (topk 1: about half the time the namesake), the passage's first
sentence says whose it is ("... is a poet"), and a search for the whole phrase
finds the right one. A first search that misses is common, and what fixes it is in
the question: the world where a JUDGE "No" and a re-plan pay.

With `sections`, a person's article is split as a real corpus splits long articles
into chunks: two passages under the same title, "life" (where and when born) and
"career" (occupation, topic, mentor). A search for the name brings either first, by
BM25's order (the life section about half the time); a career section never holds a
birthplace or a birth year, and the next search for the name brings the other section.

    python -m envs.search make-world --seed 0 --out worlds/w0 --people 60 --hops 1 2 --distractors 1

writes corpus.jsonl (Search-R1's format: {"id", "contents": "\"Title\"\\ntext"}) and
questions.jsonl ({"id", "question", "answers", "hops", "gold_doc_ids"}).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WorldConfig:
    seed: int = 0  # everything in the world follows from this seed
    people: int = 60  # people; cities and orgs are a quarter of this, works a half, countries a twentieth
    hops: list[int] = field(default_factory=lambda: [1, 2])  # hop counts (1-4) questions are drawn from, uniformly
    distractors: int = 0  # namesakes per person: same surname, and same occupation, birth city or birth year
    questions: int = 200  # distinct questions to write (an error if the world has fewer)
    relations: list[str] = field(
        default_factory=list
    )  # relations questions may follow (RELATIONS), e.g. [born_in]; [] = all
    # questions name a person as "<surname> the <occupation>", and namesakes share only the surname
    # (module docstring)
    by_occupation: bool = False
    sections: bool = False  # a person's article is two passages under one title, life and career (module docstring)


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70 syllables
_CITY_ENDS = ["ton", "holm", "vale", "mar", "burg", "field", "port", "stead"]
_COUNTRY_ENDS = ["ia", "land", "ora", "stan", "mark"]
_ORG_KINDS = ["Press", "Guild", "Company", "Society", "Institute", "Records"]
_OCCUPATIONS = [
    "painter",
    "poet",
    "architect",
    "chemist",
    "sculptor",
    "composer",
    "engineer",
    "historian",
    "astronomer",
    "novelist",
    "physician",
    "botanist",
    "cartographer",
    "violinist",
    "mathematician",
]
_ADJECTIVES = [
    "Silent",
    "Golden",
    "Hidden",
    "Last",
    "Broken",
    "Distant",
    "Crimson",
    "Quiet",
    "Frozen",
    "Burning",
    "Little",
    "Endless",
    "Hollow",
    "Wandering",
    "Northern",
    "Secret",
    "Pale",
    "Iron",
    "Bright",
    "Lonely",
]
_NOUNS = [
    "Harbor",
    "Garden",
    "River",
    "Lantern",
    "Mountain",
    "Letter",
    "Orchard",
    "Tower",
    "Winter",
    "Mirror",
    "Voyage",
    "Meadow",
    "Bridge",
    "Archive",
    "Compass",
    "Forest",
    "Island",
    "Clock",
    "Song",
    "Shore",
]
_GENRES = ["novel", "poetry collection", "memoir", "play", "short story collection"]
_TOPICS = [
    "light",
    "trade routes",
    "old maps",
    "river valleys",
    "folk songs",
    "glass",
    "tides",
    "stone bridges",
    "winter festivals",
    "early printing",
    "mountain passes",
    "clockwork",
    "salt marshes",
    "harbors",
]

# Relations a question can follow: (subject kind, relation) -> object kind; None = a year (an answer only).
RELATIONS = {
    ("person", "born_in"): "city",
    ("person", "mentor"): "person",
    ("person", "birth_year"): None,
    ("city", "country"): "country",
    ("country", "capital"): "city",
    ("org", "founder"): "person",
    ("org", "headquarters"): "city",
    ("org", "founded_year"): None,
    ("work", "author"): "person",
    ("work", "publisher"): "org",
    ("work", "year"): None,
}
# How a relation reads inside a longer question ("the birthplace of X") and as the question itself.
_PHRASES = {
    "born_in": "the birthplace of {}",
    "mentor": "the mentor of {}",
    "country": "the country in which {} lies",
    "capital": "the capital of {}",
    "founder": "the founder of {}",
    "headquarters": "the city where {} is headquartered",
    "publisher": "the publisher of {}",
    "author": "the author of {}",
}
_QUESTIONS = {
    "born_in": "Where was {} born?",
    "mentor": "Who was the mentor of {}?",
    "birth_year": "In what year was {} born?",
    "country": "In which country is {}?",
    "capital": "What is the capital of {}?",
    "founder": "Who founded {}?",
    "headquarters": "In which city is {} headquartered?",
    "founded_year": "In what year was {} founded?",
    "author": "Who wrote {}?",
    "publisher": "Which organization published {}?",
    "year": "In what year was {} published?",
}


@dataclass
class Entity:
    kind: str
    name: str
    # relation -> entity index or year (see RELATIONS); plus text that is never asked (occupation, topic, ...)
    facts: dict
    doc_id: str = ""


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


class _Names:
    """Draws names no other entity has (bounded retries, then longer names)."""

    def __init__(self):
        self.used: set[str] = set()

    def fresh(self, make) -> str:
        for attempt in range(1000):
            name = make(attempt // 50)  # after 50 collisions in a row, names grow by a syllable
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("could not find a fresh name")


def build_world(cfg: WorldConfig) -> list[Entity]:
    """All entities of the world, with their facts; entity i's passage gets doc id str(i)."""
    if not cfg.hops or not all(1 <= h <= 4 for h in cfg.hops):
        raise ValueError(f"hops must be numbers in 1..4, got {cfg.hops}")
    if cfg.people < 4 or cfg.distractors < 0:
        raise ValueError("a world needs at least 4 people and distractors >= 0")
    unknown = set(cfg.relations) - {r for _, r in RELATIONS}
    if unknown:
        raise ValueError(f"unknown relations {sorted(unknown)}; known: {sorted({r for _, r in RELATIONS})}")
    rng = random.Random(cfg.seed)
    names = _Names()
    n_countries = max(2, cfg.people // 20)
    n_cities = max(4, cfg.people // 4)
    n_orgs = max(2, cfg.people // 4)
    n_works = max(2, cfg.people // 2)
    entities: list[Entity] = []

    countries = [len(entities) + i for i in range(n_countries)]
    for _ in countries:
        entities.append(
            Entity("country", names.fresh(lambda extra: _word(rng, 2 + extra) + rng.choice(_COUNTRY_ENDS)), {})
        )
    cities = [len(entities) + i for i in range(n_cities)]
    cities_of = {c: [] for c in countries}
    for i in cities:
        country = countries[(i - cities[0]) % n_countries]  # every country gets at least one city
        cities_of[country].append(i)
        name = names.fresh(lambda extra: _word(rng, 1 + extra) + rng.choice(_CITY_ENDS))
        entities.append(
            Entity("city", name, {"country": country, "founded": rng.randint(900, 1800), "river": _word(rng, 2)})
        )
    for c in countries:
        entities[c].facts["capital"] = rng.choice(cities_of[c])

    people: list[int] = []
    for _ in range(cfg.people):
        name = names.fresh(lambda extra: _word(rng, 2 + extra) + " " + _word(rng, 3))
        people.append(len(entities))
        entities.append(
            Entity(
                "person",
                name,
                {
                    "born_in": rng.choice(cities),
                    "birth_year": rng.randint(1850, 2005),
                    "occupation": rng.choice(_OCCUPATIONS),
                    "topic": rng.choice(_TOPICS),
                },
            )
        )
        original = entities[-1]
        surname = original.name.split(" ")[1]
        for d in range(cfg.distractors):
            # A namesake shares the surname and one attribute, so neither alone finds the right passage.
            facts = {
                "born_in": rng.choice(cities),
                "birth_year": rng.randint(1850, 2005),
                "occupation": rng.choice(_OCCUPATIONS),
                "topic": rng.choice(_TOPICS),
            }
            if cfg.by_occupation:  # only the surname is shared: the occupation in the question tells them apart
                facts["occupation"] = rng.choice([o for o in _OCCUPATIONS if o != original.facts["occupation"]])
            else:
                shared = ("occupation", "born_in", "birth_year")[d % 3]
                facts[shared] = original.facts[shared]
            name = names.fresh(lambda extra: _word(rng, 2 + extra) + " " + surname)
            people.append(len(entities))
            entities.append(Entity("person", name, facts))
    for p in people:
        mentor = rng.choice(people)
        if mentor != p and rng.random() < 0.6:  # most people have a mentor
            entities[p].facts["mentor"] = mentor

    orgs = []
    for _ in range(n_orgs):
        founder = rng.choice(people)
        # Half of the orgs carry their founder's surname: a distractor for searches about the person.
        name = entities[founder].name.split(" ")[1] + " " + rng.choice(_ORG_KINDS)
        if rng.random() < 0.5 and name not in names.used:
            names.used.add(name)
        else:
            name = names.fresh(lambda extra: _word(rng, 2 + extra) + " " + rng.choice(_ORG_KINDS))
        orgs.append(len(entities))
        entities.append(
            Entity(
                "org",
                name,
                {"founder": founder, "headquarters": rng.choice(cities), "founded_year": rng.randint(1700, 2010)},
            )
        )
    for _ in range(n_works):
        # "The Silent Harbor", mostly with " of Kaki": 400 titles alone would soon run out.
        title = names.fresh(
            lambda extra: (
                f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
                + (f" of {_word(rng, 2)}" if extra or rng.random() < 0.7 else "")
            )
        )
        entities.append(
            Entity(
                "work",
                title,
                {
                    "author": rng.choice(people),
                    "publisher": rng.choice(orgs),
                    "year": rng.randint(1880, 2020),
                    "genre": rng.choice(_GENRES),
                },
            )
        )
    if cfg.sections:  # drawn last, from a stream of its own: the rest of the world is the one without sections
        lead = random.Random(cfg.seed + 2)
        for p in people:
            entities[p].facts["lead"] = lead.choice(["life", "career"])
    for i, e in enumerate(entities):
        e.doc_id = str(i)
    return entities


def passage(entities: list[Entity], e: Entity) -> str:
    """The Wikipedia-style text of one entity's passage (without the title)."""
    f, name = e.facts, e.name
    ref = lambda key: entities[f[key]].name  # noqa: E731
    if e.kind == "person":
        surname = name.split(" ")[1]
        text = (
            f"{name} (born {f['birth_year']}) is a {f['occupation']}. "
            f"{surname} was born in {ref('born_in')} in {f['birth_year']}. "
            f"As a {f['occupation']}, {surname} is best known for work on {f['topic']}."
        )
        if "mentor" in f:
            text += f" {surname} studied under {ref('mentor')}."
        return text
    if e.kind == "city":
        return (
            f"{name} is a city in {ref('country')}. It was founded in "
            f"{f['founded']} on the banks of the {f['river']} river."
        )
    if e.kind == "country":
        return f"{name} is a country. Its capital and largest city is {ref('capital')}."
    if e.kind == "org":
        return (
            f"{name} is an organization founded in {f['founded_year']} by {ref('founder')}. "
            f"It is headquartered in {ref('headquarters')}."
        )
    return f"{name} is a {f['genre']} by {ref('author')}, published in {f['year']} by {ref('publisher')}."


CAREER = "-career"  # doc id suffix of a person's career section (`sections`); the life section keeps the entity's id
_CAREER_RELATIONS = {"mentor"}  # what a career section states that a question can ask


def sections(entities: list[Entity], e: Entity) -> tuple[str, str]:
    """(life, career): a person's passage split in two, each naming the person in full, as chunks of one article do."""
    f, name = e.facts, e.name
    life = f"{name} was born in {entities[f['born_in']].name} in {f['birth_year']}."
    # The full name once more in the section drawn to lead ranks it first for a search of the name.
    again = name if f["lead"] == "career" else f"The {f['occupation']}"
    career = f"{name} is a {f['occupation']}. {again} worked on {f['topic']}."
    if "mentor" in f:
        career += f" {again} studied under {entities[f['mentor']].name}."
    return life, career


def corpus_records(entities: list[Entity], split: bool = False) -> list[dict]:
    """One record per entity; with `split`, a person's two sections (`sections`) under one title."""
    out = []
    for e in entities:
        if split and e.kind == "person":
            life, career = sections(entities, e)
            out += [
                {"id": e.doc_id, "contents": f'"{e.name}"\n{life}'},
                {"id": e.doc_id + CAREER, "contents": f'"{e.name}"\n{career}'},
            ]
        else:
            out.append({"id": e.doc_id, "contents": f'"{e.name}"\n{passage(entities, e)}'})
    return out


def gold_doc(e: Entity, relation: str, split: bool) -> str:
    """The passage that states `relation` of `e`: with `split`, a person's life or career section."""
    return e.doc_id + CAREER if split and e.kind == "person" and relation in _CAREER_RELATIONS else e.doc_id


def _answer(entities: list[Entity], e: Entity, relation: str) -> tuple[str, int | None]:
    """(answer text, index of the entity it names or None for a year)."""
    value = e.facts[relation]
    if RELATIONS[(e.kind, relation)] is None:
        return str(value), None
    return entities[value].name, value


def _surname_and_occupation(e: Entity) -> tuple[str, str]:
    return e.name.split(" ")[1], e.facts["occupation"]


def referent(e: Entity, people_like: Counter) -> str:
    """How a `by_occupation` question names `e`: "Rutaru the novelist" for a person, "" when `people_like`
    (people by surname and occupation) says another person has both (the question would be ambiguous);
    other kinds by name."""
    if e.kind != "person":
        return e.name
    surname, occupation = _surname_and_occupation(e)
    return "" if people_like[surname, occupation] > 1 else f"{surname} the {occupation}"


def make_questions(entities: list[Entity], cfg: WorldConfig) -> list[dict]:
    """Distinct questions, each following `hops` relations from a named entity to its answer."""
    rng = random.Random(cfg.seed + 1)
    out, seen, dry = [], set(), 0
    people_like = Counter(_surname_and_occupation(e) for e in entities if e.kind == "person")
    for _ in range(cfg.questions * 20):  # bounded: small worlds may have fewer distinct questions
        if len(out) == cfg.questions or dry == 10_000:  # a long run of draws that add nothing: the world is exhausted
            break
        dry += 1
        hops = rng.choice(cfg.hops)
        start = rng.randrange(len(entities))
        path, relations, here = [start], [], start
        for h in range(hops):
            options = [
                r
                for (kind, r), obj in RELATIONS.items()
                if kind == entities[here].kind
                and r in entities[here].facts
                and (obj is not None or h == hops - 1)  # a year can only be the last hop
                and (not cfg.relations or r in cfg.relations)
            ]
            if not options:
                break
            relation = rng.choice(options)
            _, nxt = _answer(entities, entities[here], relation)
            if nxt is not None and nxt in path:  # cycles ("the country of the capital of X") give away the answer
                break
            relations.append(relation)
            if nxt is not None:
                path.append(nxt)
                here = nxt
        if len(relations) != hops:
            continue
        answer, _ = _answer(entities, entities[path[hops - 1]], relations[-1])
        phrase = referent(entities[start], people_like) if cfg.by_occupation else entities[start].name
        if not phrase:
            continue
        for relation in relations[:-1]:
            phrase = _PHRASES[relation].format(phrase)
        question = _QUESTIONS[relations[-1]].format(phrase)
        if question in seen or answer.lower() in question.lower():
            continue
        seen.add(question)
        dry = 0
        out.append(
            {
                "id": f"q{len(out)}",
                "question": question,
                "answers": [answer],
                "hops": hops,
                "gold_doc_ids": [gold_doc(entities[i], r, cfg.sections) for i, r in zip(path, relations)],
            }
        )
    return out


def write_world(cfg: WorldConfig, out: str | Path) -> Path:
    """Generate the world of `cfg` and write corpus.jsonl and questions.jsonl under `out`."""
    entities = build_world(cfg)
    questions = make_questions(entities, cfg)
    if len(questions) < cfg.questions:  # checked before anything is written
        raise ValueError(
            f"asked for {cfg.questions} questions, but a world of {cfg.people} people with hops {cfg.hops} gave only "
            f"{len(questions)} distinct ones: ask for at most {len(questions)} or more people"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for filename, records in (("corpus.jsonl", corpus_records(entities, cfg.sections)), ("questions.jsonl", questions)):
        tmp = out / f"{filename}.{os.getpid()}.tmp"  # processes writing the same world at once do not mix their lines
        with tmp.open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        tmp.replace(out / filename)  # a reader never sees half a file; questions.jsonl last marks a complete world
    return out
