"""Write ``prompts.jsonl``: 64 sentence pairs (a sentence and its paraphrase) about four topics.

Run ``python -m mechaudit.examples.minilm.make_prompts``. Fields: ``text``, ``paraphrase`` (the pair) and
``topic`` (0 food, 1 sports, 2 finance, 3 weather), the concept the spec declares for probes.
"""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = {
    0: ["pizza", "soup", "cake", "salad"],
    1: ["football match", "tennis final", "marathon", "basketball game"],
    2: ["stock market", "interest rates", "bank merger", "tax reform"],
    3: ["storm", "heatwave", "snowfall", "rainy season"],
}
TEMPLATES = [
    ("I really enjoyed the {x} yesterday.", "Yesterday the {x} was a lot of fun for me."),
    ("Everyone is talking about the {x}.", "The {x} is what people keep discussing."),
    ("My sister wrote an article about the {x}.", "An article on the {x} was written by my sister."),
    ("The news about the {x} surprised us.", "We were surprised by the report on the {x}."),
]


def records() -> list[dict]:
    return [{"text": text.format(x=noun), "paraphrase": paraphrase.format(x=noun), "topic": topic}
            for topic, nouns in TOPICS.items() for noun in nouns for text, paraphrase in TEMPLATES]


def main() -> None:
    lines = [json.dumps(record) for record in records()]
    (Path(__file__).resolve().parent / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
