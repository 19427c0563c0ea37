"""``TrainConfig``: every knob of a training run, typed, in one place; the ``pete-train`` command line
is generated from its fields (``--dim`` for ``dim``, the help from the field's metadata).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from model.encoder import NLI_HEADS


def parse_stages(text: str) -> list[tuple[str, int]]:
    """``"token_init:1500,contrastive:4000"`` -> [("token_init", 1500), ("contrastive", 4000)].

    Raises:
        argparse.ArgumentTypeError: unknown stage or a malformed step count.
    """
    from model.stages import STAGES  # the one list of stage names; imported late (stages imports this module)

    out = []
    for part in text.split(","):
        name, _, steps = part.partition(":")
        if name not in STAGES or not steps.isdigit():
            raise argparse.ArgumentTypeError(f"bad stage {part!r}; use name:steps with name in {tuple(STAGES)}")
        out.append((name, int(steps)))
    return out


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


def _default_teacher_cache() -> str:
    from model.teacher import DEFAULT_CACHE_DIR

    return str(DEFAULT_CACHE_DIR)


def _default_words_cache() -> str:
    from model.teacher import WORDS_CACHE_DIR

    return str(WORDS_CACHE_DIR)


REPEATABLE = ("nli_file", "nli_pseudo", "pair_sources", "distill_sources")  # options given once per value


@dataclass
class TrainConfig:
    """One training run. Units: steps, tokens, sentences; learning rates are AdamW peak rates."""

    data_dir: str = _opt(None, "directory laid out like ../shared/data", required=True)
    out: str = _opt(None, "run directory: train.log, state.pt, final/", required=True)
    stages: list = _opt("token_init:1500,contrastive:4000,sts:600,nli:1500",
                        "name:steps,... run in order; a name is a stage record of model/stages.py",
                        type=parse_stages)
    init: str | None = _opt(None, "start from this checkpoint instead of a fresh model")
    seed: int = _opt(0, "seed of the batch generator and the initialisation")
    threads: int = _opt(max(1, os.cpu_count() or 1), "torch CPU threads")
    teacher_cache: str = _opt(None, "teacher embedding cache directory (model.teacher.TeacherCache; "
                                    "default $PETE_CACHE_DIR/teacher or ~/.cache/pete-serve/teacher)")
    words_cache: str = _opt(None, "teacher cache of single words for --distill-words (python -m model.teacher "
                                  "--corpus words; default $PETE_CACHE_DIR/teacher_words)")
    # model
    embedding: str = _opt("fourier_geo", "token embedding kind (model.embeddings registry)")
    embedding_options: str = _opt('{"mlp_hidden": 256}', "JSON options of the embedding kind")
    tokenizer: str = _opt("frequency", "token id order", choices=("bert", "frequency"))
    dim: int = _opt(256, "model width d")
    layers: int = _opt(2, "transformer blocks")
    heads: int = _opt(4, "attention heads")
    ffn_dim: int = _opt(1024, "GeGLU hidden width")
    max_len: int = _opt(128, "longest input the model serves (tokens)")
    max_tokens: int = _opt(64, "truncation while training (tokens)")
    nli_head: str | None = _opt(None, "NLI head (model.encoder.NLI_HEADS; default: the --init checkpoint's "
                                      "head, kept with its weights; pair for a fresh model)", choices=tuple(NLI_HEADS))
    nli_hidden: int | None = _opt(None, "NLI head hidden width (default: the --init checkpoint's; 128 for a "
                                        "new head)", type=int)
    # optimisation
    lr: float = _opt(1e-3, "peak learning rate of the contrastive stage")
    lr_distill: float = _opt(2e-4, "peak learning rate of the distill stage")
    lr_token: float = _opt(3e-3, "peak learning rate of token_init")
    lr_sts: float = _opt(2e-4, "peak learning rate of the sts stage")
    lr_nli: float = _opt(1e-3, "peak learning rate of the nli stage")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    warmup: int = _opt(300, "linear warm-up steps (at most a tenth of the stage)")
    # batches and loss weights
    caption_batch: int = _opt(96, "caption pairs per InfoNCE batch")
    triplet_batch: int = _opt(32, "NLI (premise, entailed, contradicted) triplets per InfoNCE batch")
    distill_batch: int = _opt(128, "sentences per distillation batch")
    distill_sentences: int = _opt(0, "distil from the first N cached rows only (0: every finished row)")
    distill_sources: list = _opt((), "text/ file (e.g. forum) that --distill-source-fraction of each distillation "
                                     "batch is drawn from; repeatable; default: uniform over the cache",
                                 action="append")
    distill_source_fraction: float = _opt(0.5, "part of each distillation batch drawn from --distill-sources")
    distill_weight: float = _opt(0.0, "weight of the distillation loss inside the contrastive and sts stages")
    relational_weight: float = _opt(1.0, "weight of the in-batch cosine-matrix MSE in distillation")
    distill_pairs: int = _opt(0, "near pairs (model.near_pairs: STS-B/MRPC train texts, teacher neighbours) "
                                 "added to each distillation batch")
    pair_weight: float = _opt(1.0, "weight of the MSE between student and teacher cosines of the near pairs")
    distill_words: int = _opt(0, "single words (the --words-cache, model.teacher.word_corpus) added to each "
                                 "distillation batch: word-level knowledge distillation")
    word_pairs: int = _opt(0, "near word pairs (each word's teacher nearest neighbours among the --words-cache "
                              "words) added to each distillation batch, their cosines regressed on the "
                              "teacher's (--pair-weight)")
    pair_pool: int = _opt(150_000, "cached rows searched for teacher neighbours (near pairs)")
    pair_sources: list = _opt((), "draw the near-pair pool from this text/ file only (e.g. news, forum); "
                                  "repeatable; default: every cached row", action="append")
    infonce_weight: float = _opt(0.0, "weight of caption/triplet InfoNCE inside the distill stage")
    gold_weight: float = _opt(0.0, "weight, inside the distill stage, of the MSE between the student's cosine "
                                   "of STS-B train pairs and their gold score put on the teacher's cosine "
                                   "scale (model.train_data.gold_on_teacher_scale)")
    gold_batch: int = _opt(32, "STS-B train pairs per batch of the gold loss")
    gold_balanced: bool = _opt(False, "draw the gold loss's pairs genre-balanced (each STS-B genre equally "
                                      "often; forums is 8%% of STS-B train)")
    sts_batch: int = _opt(32, "STS-B train pairs per CoSENT batch")
    nli_batch: int = _opt(64, "NLI pairs per batch of the nli stage")
    nli_aux_batch: int = _opt(32, "NLI pairs per auxiliary batch")
    nli_aux_weight: float = _opt(0.0, "weight of the auxiliary NLI loss in the contrastive stage")
    nli_freeze_encoder: bool = _opt(False, "nli stage trains the head only")
    nli_file: list = _opt((), "extra NLI file (SNLI/MultiNLI jsonl, GLUE tsv); repeatable", action="append")
    nli_teacher: str = _opt(None, "NLI teacher directory with its logit caches (model.nli_teacher; default "
                                  "$PETE_CACHE_DIR/nli_teacher)")
    nli_kd_weight: float = _opt(0.0, "weight of the KL to the NLI teacher's probabilities on the labelled "
                                     "pairs (its logits_train cache)")
    nli_pseudo: list = _opt((), "name of a logit cache of unlabelled pairs in the NLI teacher directory "
                                "(logits_NAME) to learn the teacher's probabilities on; repeatable", action="append")
    nli_pseudo_batch: int = _opt(64, "pseudo-labelled pairs per nli step")
    nli_pseudo_weight: float = _opt(1.0, "weight of the KL on pseudo-labelled pairs")
    in_domain_weight: float = _opt(3.0, "sampling weight of SNLI-domain NLI sources")
    snli_dev_train_fraction: float = _opt(0.5, "part of SNLI dev trained on; the rest is the held-back "
                                               "NLI validation set")
    token_batch: int = _opt(2048, "token ids per token_init batch")
    # bookkeeping
    log_every: int = _opt(50, "log losses and throughput every N steps")
    save_every: int = _opt(200, "write state.pt every N steps")
    save_minutes: float = _opt(5.0, "... and at least every N minutes")
    eval_every: int = _opt(0, "dev scores every N steps (0: at the end of each stage only)")

    def __post_init__(self) -> None:
        if isinstance(self.stages, str):
            self.stages = parse_stages(self.stages)
        for name in REPEATABLE:
            setattr(self, name, list(getattr(self, name) or []))
        if self.nli_teacher is None:
            from model.teacher import NLI_TEACHER_DIR

            self.nli_teacher = str(NLI_TEACHER_DIR)
        if self.teacher_cache is None:
            self.teacher_cache = _default_teacher_cache()
        if self.words_cache is None:
            self.words_cache = _default_words_cache()

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def embedding_options_dict(self) -> dict:
        """``embedding_options`` parsed from JSON."""
        return json.loads(self.embedding_options)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The ``pete-train`` argument parser: one option per ``TrainConfig`` field."""
    p = argparse.ArgumentParser(prog="pete-train", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"help": meta.pop("help"), "dest": f.name}
        if meta.pop("required", False):
            kwargs["required"] = True
        elif f.type in ("bool", bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["default"] = f.default if f.name not in REPEATABLE else []
        if "action" in meta:
            kwargs["action"] = meta.pop("action")
        if "action" not in kwargs:
            kwargs["type"] = meta.pop("type", None) or {"int": int, "float": float}.get(str(f.type), str)
        kwargs.update(meta)
        p.add_argument(flag, **kwargs)
    return p


def config_from_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """Parse a ``pete-train`` command line into a ``TrainConfig``."""
    ns = build_parser(description).parse_args(argv)
    return TrainConfig(**vars(ns))
