"""Dataset readers (model/data.py) on tiny files in each standard format, written here (plain and
gzip), plus the row counts of the shared data when it is present."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from model.data import (
    DataPaths,
    NLIPair,
    Sentence,
    STSPair,
    caption_groups,
    iter_sentences,
    read_mrpc,
    read_nli,
    read_nli_table,
    read_nli_train,
    read_sentences,
    read_snli_jsonl,
    read_sts,
    split_snli_dev,
    sts_genre,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, gzip-compressed when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


SNLI_ROWS = [
    {"annotator_labels": ["neutral"], "captionID": "1.jpg#2", "gold_label": "neutral", "pairID": "1r1n",
     "sentence1": "Two women are embracing.", "sentence1_parse": "(ROOT ...)", "sentence2": "The sisters hug."},
    {"gold_label": "-", "pairID": "1r1x", "sentence1": "Two women are embracing.", "sentence2": "No consensus."},
    {"gold_label": "contradiction", "pairID": "1r1c", "sentence1": "A \"quoted\" man, sitting.",
     "sentence2": "Nobody sits."},
]


@pytest.mark.parametrize("name", ["snli_1.0_dev.jsonl", "snli_1.0_dev.jsonl.gz"])
def test_snli_jsonl_drops_pairs_without_gold_label(tmp_path, name):
    path = write(tmp_path / name, jsonl(SNLI_ROWS) + "\n")  # a trailing blank line is ignored
    expected = [NLIPair("Two women are embracing.", "The sisters hug.", "neutral", "snli"),
                NLIPair('A "quoted" man, sitting.', "Nobody sits.", "contradiction", "snli")]
    assert read_snli_jsonl(path) == expected
    assert read_nli(path) == expected


def test_multinli_jsonl_is_read_with_source_mnli(tmp_path):
    rows = [{"annotator_labels": ["entailment"], "genre": "fiction", "gold_label": "entailment", "pairID": "9e",
             "promptID": "9", "sentence1": "He left early.", "sentence2": "He went away."},
            {"genre": "slate", "gold_label": "-", "sentence1": "x", "sentence2": "y"}]
    path = write(tmp_path / "multinli_1.0_dev_matched.jsonl", jsonl(rows))
    assert read_nli(path) == [NLIPair("He left early.", "He went away.", "entailment", "mnli")]


def test_glue_mnli_tsv_uses_gold_label_and_no_quoting(tmp_path):
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "gold_label"]
    rows = [
        ["0", "63735", "63735n", "slate", "( ( The", "( Everyone", "(ROOT", "(ROOT",
         'The new rights are "nice enough', "Everyone likes the benefits", "neutral", "entailment", "neutral"],
        ["1", "1", "1c", "fiction", "(", "(", "(", "(", "He said no.", "He agreed.", "contradiction", "neutral",
         "contradiction"],
        ["2", "2", "2x", "fiction", "(", "(", "(", "(", "Unclear.", "Maybe.", "neutral", "entailment", "-"],
    ]
    text = "\n".join("\t".join(r) for r in [header] + rows) + "\n"
    path = write(tmp_path / "dev_matched.tsv", text)
    expected = [NLIPair('The new rights are "nice enough', "Everyone likes the benefits", "neutral", "mnli"),
                NLIPair("He said no.", "He agreed.", "contradiction", "mnli")]
    assert read_nli_table(path) == expected
    assert read_nli(path) == expected


def test_mnli_csv_export(tmp_path):
    text = ('pairID,sentence1,sentence2,label\n'
            '63735n,The new rights are nice enough,Everyone really likes the newest benefits ,neutral\n'
            '91383c,"A list, and a ""searchable"" database.",The articles are not searchable.,contradiction\n'
            '1x,unlabelled,row,\n')
    path = write(tmp_path / "multinli_1.0_dev_mismatched.csv.gz", text)
    expected = [NLIPair("The new rights are nice enough", "Everyone really likes the newest benefits ", "neutral", "mnli"),
                NLIPair('A list, and a "searchable" database.', "The articles are not searchable.", "contradiction", "mnli")]
    assert read_nli(path) == expected


def test_nli_table_without_needed_columns_is_rejected(tmp_path):
    path = write(tmp_path / "bad.csv", "premise,hypothesis,label\na,b,neutral\n")
    with pytest.raises(ValueError, match="sentence1"):
        read_nli(path)


def test_sts_benchmark_csv_with_extra_trailing_columns(tmp_path):
    rows = [
        "main-captions\tMSRvid\t2012test\t0000\t5.000\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.",
        'main-news\theadlines\t2013\t0001\t0.500\tHe said "stop\tShe left.\tsource-a\tsource-b',
        "main-forums\tdeft-forum\t2014\t0002\t2.25\tOne.",  # too few fields: skipped
    ]
    path = write(tmp_path / "stsbenchmark" / "sts-dev.csv.gz", "\n".join(rows) + "\n")
    assert read_sts(path) == [
        STSPair("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0, "main-captions"),
        STSPair('He said "stop', "She left.", 0.5, "main-news"),
    ]
    assert [sts_genre(g) for g in ("main-captions", "main-news", "main-forums", "main-forum", "")] == [
        "captions", "news", "forums", "forums", ""]


def test_snli_dev_split_is_seeded_disjoint_and_complete():
    dev = [NLIPair(f"p{i}", f"h{i}", "neutral") for i in range(101)]
    a, b = split_snli_dev(dev, 0.5)
    assert (len(a), len(b)) == (50, 51) and sorted(a + b) == sorted(dev)
    assert split_snli_dev(dev, 0.5) == (a, b)  # same seed, same split
    assert split_snli_dev(dev, 0.0) == ([], split_snli_dev(dev, 0.0)[1]) and len(split_snli_dev(dev, 0.0)[1]) == 101


def test_nli_train_tsv(tmp_path):
    text = ("source\tpremise\thypothesis\tlabel\tlabel_space\n"
            "conjnli\tA \"big\" dog runs.\tAn animal runs.\tentailment\t3way\n"
            "rte\tParis is in France.\tParis is in Spain.\tnot_entailment\t2way\n"
            "joci\t\tEmpty premise.\tneutral\t3way\n")
    path = write(tmp_path / "nli_train.tsv.gz", text)
    expected = [NLIPair('A "big" dog runs.', "An animal runs.", "entailment", "conjnli"),
                NLIPair("Paris is in France.", "Paris is in Spain.", "not_entailment", "rte")]
    assert read_nli_train(path) == expected
    assert read_nli(path) == expected  # dispatch by name, not read as an MNLI table


def test_sentences_tsv_and_caption_groups(tmp_path):
    text = ("source\tsentence\timage_id\n"
            "multi30k\tTwo guys look at their hands.\tflickr30k:1\n"
            "multi30k\tTwo men inspect their hands.\tflickr30k:1\n"
            "coco\tA \"red\" bus.\tcoco:7\n"
            "coco\tA red bus.\tcoco:7\n"
            "coco\tA red bus.\tcoco:7\n"
            "coco\tA lone caption.\tcoco:8\n"
            "trec\tWhat is the capital of France?\t\n"
            "sst\t\t\n")
    path = write(tmp_path / "sentences.tsv.gz", text)
    sentences = read_sentences(path)
    assert list(iter_sentences(path)) == sentences
    assert len(sentences) == 7  # the empty sentence is dropped
    assert sentences[0] == Sentence("Two guys look at their hands.", "multi30k", "flickr30k:1")
    assert sentences[2].text == 'A "red" bus.'
    assert sentences[-1] == Sentence("What is the capital of France?", "trec", "")
    assert caption_groups(sentences) == [["Two guys look at their hands.", "Two men inspect their hands."],
                                         ['A "red" bus.', "A red bus."]]


def test_mrpc_without_header(tmp_path):
    text = ("1\t702876\t702977\tAmrozi accused his brother.\tReferring to him, Amrozi accused his brother.\n"
            "0\t2108705\t2108831\tYucaipa owned \"Dominick's\".\tYucaipa bought Dominick's.\n")
    assert read_mrpc(write(tmp_path / "msr_paraphrase_test.txt", text)) == [
        ("Amrozi accused his brother.", "Referring to him, Amrozi accused his brother.", 1),
        ('Yucaipa owned "Dominick\'s".', "Yucaipa bought Dominick's.", 0)]


def test_data_paths():
    paths = DataPaths("/data")
    assert paths.sts_test == Path("/data/stsbenchmark/sts-test.csv.gz")
    assert paths.snli_dev == Path("/data/snli/snli_1.0_dev.jsonl.gz")
    assert paths.mnli_dev_mismatched == Path("/data/mnli/multinli_1.0_dev_mismatched.csv.gz")
    with pytest.raises(AttributeError):
        paths.nonexistent


@pytest.mark.skipif(not (SHARED_DATA / "README.md").is_file(), reason=f"shared data not found at {SHARED_DATA}")
def test_shared_evaluation_splits_have_the_documented_row_counts():
    paths = DataPaths(SHARED_DATA)
    counts = {"sts_dev": 1500, "sts_test": 1379, "snli_dev": 9842, "snli_test": 9824,
              "mnli_dev_matched": 9815, "mnli_dev_mismatched": 9832}
    for name, n in counts.items():
        rows = (read_sts if name.startswith("sts") else read_nli)(getattr(paths, name))
        assert len(rows) == n, name
    assert all(0.0 <= p.score <= 5.0 for p in read_sts(paths.sts_test))
