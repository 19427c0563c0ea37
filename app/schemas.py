"""Request and response bodies (pydantic v2), with examples for the OpenAPI page.

Requests forbid unknown fields and reject empty or blank strings and empty lists (422 naming
the field). Limits that depend on settings (pairs per request, characters per text) are checked
in ``app.limits`` after parsing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, StringConstraints(min_length=1), AfterValidator(_not_blank)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- /similarity ------------------------------------------------------------------------------
class TextPair(_Request):
    """Two texts to compare."""

    text_a: Text = Field(description="First text.", examples=["A man is playing a guitar."])
    text_b: Text = Field(description="Second text.", examples=["Someone plays an instrument."])


class SimilarityRequest(_Request):
    pairs: list[TextPair] = Field(min_length=1, description="Pairs to score (at most max_items_per_request).")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"pairs": [
        {"text_a": "A man is playing a guitar.", "text_b": "Someone plays an instrument."},
        {"text_a": "A cat sleeps.", "text_b": "The stock market fell."}]}]})


class SimilarityResponse(BaseModel):
    scores: list[float] = Field(description="Cosine similarity of each pair's sentence vectors, in [-1, 1].")
    truncated: list[bool] = Field(description="Per pair: a text was cut to the token limit.")
    model: str = Field(description="Name of the model that computed the scores.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"scores": [0.82, 0.05], "truncated": [False, False], "model": "default"}]})


# ---- /nli -------------------------------------------------------------------------------------
class NliPair(_Request):
    """A premise and a hypothesis."""

    premise: Text = Field(description="The premise.", examples=["A man is playing a guitar on stage."])
    hypothesis: Text = Field(description="The hypothesis.", examples=["A man is performing music."])


class NliRequest(_Request):
    pairs: list[NliPair] = Field(min_length=1, description="Pairs to classify (at most max_items_per_request).")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"pairs": [
        {"premise": "A man is playing a guitar on stage.", "hypothesis": "A man is performing music."}]}]})


class NliProbabilities(BaseModel):
    entailment: float = Field(ge=0, le=1)
    neutral: float = Field(ge=0, le=1)
    contradiction: float = Field(ge=0, le=1)


class NliResult(BaseModel):
    label: Literal["entailment", "neutral", "contradiction"] = Field(description="Most probable label.")
    probabilities: NliProbabilities = Field(description="Class probabilities; they sum to 1.")
    truncated: bool = Field(description="The premise or the hypothesis was cut to the token limit.")


class NliResponse(BaseModel):
    results: list[NliResult]
    model: str

    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [{
        "label": "entailment", "probabilities": {"entailment": 0.91, "neutral": 0.07, "contradiction": 0.02},
        "truncated": False}], "model": "default"}]})


# ---- /v1/embeddings (OpenAI-compatible; /embeddings is an alias) --------------------------------
def _one_or_more(value):
    return [value] if isinstance(value, str) else value


# A string or a non-empty list of strings, validated as the list (so a bad text is `input.<i>`).
OneOrMoreTexts = Annotated[list[Text], Field(min_length=1), BeforeValidator(_one_or_more), WithJsonSchema({
    "anyOf": [{"type": "string", "minLength": 1},
              {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}]})]


class EmbeddingsRequest(_Request):
    """The OpenAI embeddings request: ``input`` one text or a list of texts (token-id arrays are not
    accepted), ``model`` and ``user`` accepted and ignored (one model is served), ``dimensions``
    accepted only when it equals the model's, ``encoding_format`` float or base64."""

    input: OneOrMoreTexts = Field(
        description="A text, or a list of texts (at most max_items_per_request); a single text is input 0 "
                    "(errors name it `input.0`).",
        examples=[["A man is playing a guitar.", "A cat sleeps."]])
    model: str | None = Field(None, description="Accepted for OpenAI clients and ignored: the response names the "
                                                "model that is served.", examples=["default"])
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: a list of numbers; `base64`: the little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's vector length when given "
                                                           "(vectors are not shortened).")
    user: str | None = Field(None, description="Accepted for OpenAI clients and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="Position of the text in `input`.")
    embedding: list[float] | str = Field(description="Sentence vector (mean pooled, not normalised), length "
                                                     "`dimensions`; a base64 string of little-endian float32 "
                                                     "with `encoding_format: base64`.")
    truncated: bool = Field(description="The text was cut to the token limit.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens encoded, special tokens included.")
    total_tokens: int = Field(description="Same as prompt_tokens (nothing is generated).")


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    dimensions: int = Field(description="Length of each embedding.")
    usage: Usage

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.2, 0.13],
                                    "truncated": False}],
        "model": "default", "dimensions": 3, "usage": {"prompt_tokens": 9, "total_tokens": 9}}]})


# ---- probes and info --------------------------------------------------------------------------
class Status(BaseModel):
    status: str = Field(examples=["ok"])


class Parameters(BaseModel):
    total: int
    embedding: int
    encoder: int
    nli_head: int


class Limits(BaseModel):
    max_items_per_request: int = Field(description="Most pairs (/similarity, /nli) or inputs (/embeddings) "
                                                   "in one request.")
    max_pairs_per_request: int = Field(description="Deprecated: the same value as max_items_per_request "
                                                   "(its former name), kept for existing clients.")
    max_chars_per_text: int
    max_tokens_per_text: int
    max_body_bytes: int
    request_timeout_s: float


class InfoResponse(BaseModel):
    model: str = Field(description="Model name (see Settings.model_name).")
    embedding_kind: str = Field(description="Token embedding kind of the checkpoint, e.g. fourier_geo.")
    nli_head: Literal["pair", "align", "cross"]
    dimensions: int = Field(description="Sentence vector length.")
    parameters: Parameters
    model_bytes: int = Field(description="Bytes held by parameters and buffers.")
    materialized_embeddings: bool = Field(description="PETE embedding table precomputed at load.")
    quantization: Literal["none", "int8"] = Field(description="Linear layers served in float32 (none) or "
                                                              "dynamically quantized to int8.")
    labels: list[str] = Field(description="NLI labels, in probability order.")
    limits: Limits
    auth_required: bool = Field(description="POST endpoints need an API key.")


class FieldError(BaseModel):
    field: str = Field(examples=["pairs.0.text_a"])
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="Stable error code.", examples=["invalid_request"])
    message: str = Field(description="Human-readable message (never a stack trace).")
    detail: list[FieldError] | None = Field(None, description="Offending fields, where there are some.")
