"""The base of every schema: strict (unknown keys, NaN, booleans-as-numbers refused), frozen,
validated variants; sourced numbers and the tables profiles are made of."""
from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from simulator.errors import from_validation

S = TypeVar("S", bound="Strict")


class Strict(BaseModel):
    """Base model: unknown fields are an error, models are immutable, numbers are finite and
    never booleans (`true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and \
                not _accepts_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{str(value).lower()} is a boolean, not a number: write the number")
        return value

    def variant(self: S, **update: Any) -> S:
        """A copy with fields replaced, validated again (model_copy(update=...) is not)."""
        data = {**self.model_dump(), **{k: v.model_dump() if isinstance(v, BaseModel) else v
                                        for k, v in update.items()}}
        try:
            return type(self).model_validate(data)
        except ValidationError as err:
            raise from_validation(err, type(self).__name__) from None


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (bool itself, or a union holding bool)."""
    if annotation is bool:
        return True
    return any(_accepts_bool(a) for a in get_args(annotation))


class Sourced(Strict):
    """A number with where it came from."""

    value: float
    source: str = Field(min_length=3)

    @model_validator(mode="before")
    @classmethod
    def _needs_source(cls, data: object) -> object:
        if isinstance(data, str):
            try:
                data = float(data)
            except ValueError:
                return data
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            raise ValueError(f"the number {data} has no source: write "
                             f"{{value: {data}, source: '<where it comes from>'}}")
        if isinstance(data, dict) and "value" in data and not data.get("source"):
            raise ValueError("this number is missing its source: add source: '<where it comes "
                             "from>'")
        return data


class RateTable(Strict):
    """A positive value by size (a rate per second), log-interpolated, with a source."""

    points: list[tuple[float, float]] = Field(min_length=1)
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _valid(self) -> "RateTable":
        xs = [p[0] for p in self.points]
        if any(x <= 0 for x in xs) or xs != sorted(xs):
            raise ValueError("table points need positive, increasing sizes")
        if any(v <= 0 for _, v in self.points):
            raise ValueError("table values must be positive")
        return self


class EfficiencyTable(RateTable):
    """Fraction of peak by size (M rows, or tokens per expert), log-interpolated, with a source."""

    precision: Literal["bf16", "fp8"] = Field(
        "bf16", description="the precision measured at: fractions are of that precision's peak")

    @model_validator(mode="after")
    def _fraction(self) -> "EfficiencyTable":
        if any(e > 1 for _, e in self.points):
            raise ValueError("efficiency must lie in (0, 1]")
        return self


class ShapeEfficiencyTable(Strict):
    """GEMM fraction of peak on a grid of M (rows) by weight elements (N x K), interpolated
    bilinearly in log M and log N*K, with a source."""

    m: list[float] = Field(min_length=1, description="rows, increasing")
    weights: list[float] = Field(min_length=1, description="N x K elements, increasing")
    efficiency: list[list[float]] = Field(description="one row per m, one column per weights")
    source: str = Field(min_length=3)
    precision: Literal["bf16", "fp8"] = Field("bf16", description="the precision measured at")

    @model_validator(mode="after")
    def _valid(self) -> "ShapeEfficiencyTable":
        _check_grid("m", self.m, "weights", self.weights, self.efficiency)
        return self


def _check_grid(row_name: str, rows: list[float], col_name: str, cols: list[float],
                grid: list[list[float]]) -> None:
    """Both axes positive and strictly increasing; one row per row value, one column per
    column value; every cell a fraction in (0, 1]."""
    for name, xs in ((row_name, rows), (col_name, cols)):
        if any(x <= 0 for x in xs) or xs != sorted(xs) or len(set(xs)) != len(xs):
            raise ValueError(f"{name} needs positive, strictly increasing values")
    if len(grid) != len(rows) or any(len(row) != len(cols) for row in grid):
        raise ValueError(f"efficiency needs one row per {row_name} with one value per "
                         f"{col_name} entry")
    if any(not 0 < e <= 1 for row in grid for e in row):
        raise ValueError("efficiency must lie in (0, 1]")


ATTENTION_KERNELS = ("mla_decode", "gqa_decode", "mla_prefill", "gqa_prefill")


class AttentionTable(Strict):
    """An attention core's achieved fractions of the HBM datasheet rate (memory side) and of the
    compute peak (compute side) on a grid of sequences in the batch by KV length (decode) or by
    prompt length (prefill), bilinear in the logs; a call takes the slower side."""

    batch: list[float] = Field(min_length=1, description="sequences, increasing")
    kv_len: list[float] = Field(min_length=1, description="KV (decode) or prompt (prefill) "
                                "length in tokens, increasing")
    memory_efficiency: list[list[float]] = Field(
        description="fraction of hbm_bandwidth_Bps; one row per batch, one column per kv_len")
    compute_efficiency: list[list[float]] = Field(
        description="fraction of the compute peak; one row per batch, one column per kv_len")
    source: str = Field(min_length=3)
    precision: Literal["bf16", "fp8"] = Field("bf16", description="the precision measured at")

    @model_validator(mode="after")
    def _valid(self) -> "AttentionTable":
        _check_grid("batch", self.batch, "kv_len", self.kv_len, self.memory_efficiency)
        _check_grid("batch", self.batch, "kv_len", self.kv_len, self.compute_efficiency)
        return self
