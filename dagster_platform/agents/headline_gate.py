"""The gate a model's headline must pass before a person reads it instead of the composed one.

A small model asked for one sentence repeats words, echoes the question, drifts into English
or invents an id. Each check below is one of those failures, named in the verdict so that the
interaction records why the model's text was refused. The same gate scores the fine-tuned
adapters: the share of held-out questions whose model headline passes it and carries the
expected fact.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from dagster_platform.agents.entities import CLUSTER_SHAPE, HOST_SHAPE
from dagster_platform.agents.headline import Language

MAX_CHARS = 400
MAX_SENTENCES = 3
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?")
# ids an answer names: applications, actions, incidents, runbooks, hosts and clusters
IDS = re.compile(
    rf"application_\d+_\d+|act-[0-9a-f]{{6,}}|INC-\d{{4}}-\d+|rb-[a-z0-9-]+|{HOST_SHAPE}|"
    rf"{CLUSTER_SHAPE}"
)
_SENTENCE = re.compile(r"(?<=[.!?。])\s+|\n+")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_LATIN = re.compile(r"[A-Za-z]")
_CODE = re.compile(r"`[^`]*`")
ANSWER_WORDS = re.compile(r"^(?:yes|no)\b|^(?:네|예|아니요|아니오)\b", re.IGNORECASE)


_KEY_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?(?:%|GB|TB|vcores)")


def key_facts(composed: str, most: int = 3) -> list[str]:
    """What the composed headline leads with: its first id and the figures of its first
    sentence. A model's headline must say them too, or it is a sentence beside the answer."""
    first = re.split(r"(?<=[.!?])\s", composed.strip(), maxsplit=1)[0]
    facts = [m.group(0) for m in [IDS.search(first)] if m]
    facts += [m.group(1) for m in _KEY_NUMBER.finditer(first)][:most]
    return facts


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # why it was refused; empty when it passed

    @classmethod
    def refuse(cls, reason: str) -> Verdict:
        return cls(False, reason)


def _normal(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if c.isalnum() or c.isspace()).strip()


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _language_problem(text: str, language: Language) -> str | None:
    """Korean wanted: Hangul is most of the prose (ids, code and numbers aside); English
    wanted (or a third language, answered in English): no Hangul at all."""
    prose = IDS.sub(" ", _CODE.sub(" ", text))
    hangul, latin = len(_HANGUL.findall(prose)), len(_LATIN.findall(prose))
    if language == "ko" and hangul < max(4, latin):
        return "not in Korean, the question's language"
    foreign = sum(c.isalpha() and not c.isascii() for c in prose)
    if language != "ko" and (hangul or foreign > latin):
        return "not in English" + (", the question's language" if language == "en" else "")
    return None


def _repeats(text: str, evidence: str) -> str | None:
    sentences = [_normal(s) for s in _sentences(text)]
    counted = Counter(s for s in sentences if len(s) > 8)
    if any(n > 1 for n in counted.values()):
        return "repeats a sentence"
    words = _normal(text).split()
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    if trigrams and max(trigrams.values()) >= 3:
        return "repeats itself"
    source = _normal(evidence).split()
    for word, n in Counter(w for w in words if len(w) > 1).items():
        if n >= 5 or (n >= 3 and len(word) > 3 and word not in source):  # "CPU" thrice is fine
            return f"repeats the word {word!r}"
    return None


def _echoes(text: str, question: str) -> bool:
    said, asked = _normal(text), _normal(question)
    if (len(asked) >= 8 and asked in said) or (len(said) >= 4 and said in asked):
        return True
    first = _sentences(text)[0] if _sentences(text) else text
    return SequenceMatcher(None, _normal(first), asked).ratio() >= 0.7


def judge(
    text: str,
    question: str,
    language: Language,
    evidence: str,
    must_name: Sequence[str] = (),
) -> Verdict:
    """Whether a model's headline may be shown: every check, the first failure named;
    `must_name` are the answer's key facts (`key_facts` of the composed headline)."""
    text = text.strip()
    if not text:
        return Verdict.refuse("empty")
    if "\ufffd" in text:
        return Verdict.refuse("cut off inside a character")
    if len(text) > MAX_CHARS:
        return Verdict.refuse(f"longer than {MAX_CHARS} characters")
    if len(_sentences(text)) > MAX_SENTENCES:
        return Verdict.refuse(f"more than {MAX_SENTENCES} sentences")
    letters = sum(c.isalpha() for c in text)
    if letters < 0.3 * len(text.replace(" ", "")):
        return Verdict.refuse("not prose (mostly digits and punctuation)")
    problem = _language_problem(text, language)
    if problem:
        return Verdict.refuse(problem)
    if _echoes(text, question):
        return Verdict.refuse("echoes the question")
    source = f"{question}\n{evidence}"
    problem = _repeats(text, source)
    if problem:
        return Verdict.refuse(problem)
    quoted = set(NUMBER.findall(source))
    invented = sorted({n for n in NUMBER.findall(text) if n not in quoted})
    if invented:
        return Verdict.refuse(f"numbers not in the evidence: {', '.join(invented[:5])}")
    named = IDS.findall(text)
    unknown = sorted({i for i in named if i not in source})
    if unknown:
        return Verdict.refuse(f"ids not in the evidence: {', '.join(unknown[:5])}")
    if not named and not NUMBER.search(text) and not (ANSWER_WORDS.search(text)):
        return Verdict.refuse("names nothing from the evidence (no id, number or yes/no)")
    missing = [fact for fact in must_name if fact not in text]
    if missing:
        return Verdict.refuse(f"misses the answer's key facts: {', '.join(missing)}")
    return Verdict(True)
