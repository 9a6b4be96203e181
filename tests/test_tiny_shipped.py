"""The shipped sparsecut-tiny family (assets/sparsecut-tiny): its members (sparsecut-tiny and llava-tiny at least;
the family is trained a few members at a time) load by name through the zoo and reproduce its results table on the
first 200 held-out questions (within 2 points), and the assets fit their budget."""

import json
import os

import pytest

from sparsecut import SparseCutForConditionalGeneration, zoo
from training.tiny.family import FAMILY
from training.tiny.ship import score_shipped
from sparsecut.zoo import manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "assets", "sparsecut-tiny")
RESULTS = os.path.join(SHIPPED, "results.json")
MEMBERS = list(manifest(SHIPPED)["models"])


@pytest.fixture(scope="module")
def table():
    with open(RESULTS, encoding="utf-8") as handle:
        return json.load(handle)


def test_the_shipped_members_load_by_name(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARSECUT_ASSETS", raising=False)
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path))
    assert {"sparsecut-tiny", "llava-tiny"} <= set(MEMBERS) <= set(FAMILY) and set(MEMBERS) <= set(zoo.available())
    model = SparseCutForConditionalGeneration.from_pretrained("sparsecut-tiny")
    assert model.config.pattern == "sparse-uniform" and model.config.high_res
    assert SparseCutForConditionalGeneration.from_pretrained("llava-tiny").config.mode == "llava"


def test_the_table_and_card_cover_every_shipped_member_on_2000_held_out_questions(table):
    assert table["questions"] >= 2000 and set(table["results"]) == set(table["members"]) == set(MEMBERS)
    markdown = open(os.path.join(SHIPPED, "results.md"), encoding="utf-8").read()
    card = open(os.path.join(SHIPPED, "MODEL_CARD.md"), encoding="utf-8").read()
    assert all(f"| {name} |" in markdown and f"| `{name}` |" in card for name in MEMBERS)


def test_shipped_checkpoints_reproduce_the_table_on_200_questions(table, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path))
    subset = table["subset"]
    images = table["images"] * subset["questions"] // table["questions"] + 8  # enough scenes for the first 200
    rescored = score_shipped(SHIPPED, MEMBERS, seed=manifest(SHIPPED)["tower"]["tower_seed"], images=images,
                             subset=subset["questions"], progress=False, layout=manifest(SHIPPED)["tower"]["layout"])
    for name in MEMBERS:
        expected, got = subset["results"][name], rescored["subset"]["results"][name]
        assert got["count"] == subset["questions"]
        assert abs(got["overall"] - expected["overall"]) <= 0.02, (name, got["overall"], expected["overall"])
        for family, accuracy in expected["families"].items():  # ~28 questions each: one flipped answer is 3.6 points
            assert abs(got["families"][family] - accuracy) <= 0.05, (name, family, got["families"][family], accuracy)


def test_assets_stay_within_60_mb():
    total = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(os.path.join(ROOT, "assets"))
                for name in names)
    assert total <= 60 * 2**20, f"assets/ holds {total / 2**20:.1f} MB"
