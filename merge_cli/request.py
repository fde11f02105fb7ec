"""What a merge (or a re-verification) is asked to do: one frozen request holding the only copy of the defaults.

The command line, the Python API and `verify` each build one `MergeRequest` and pass it down; no stage
re-assembles it from loose parameters. Importing this module is cheap (no onnx, no numpy): the CLI
reads its defaults for `--help`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ExitCode, check_path_text, usage

if TYPE_CHECKING:
    from .mapping import FeatureMapping

DEFAULT_ROWS = 256
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5
MAX_ROWS = 1_000_000  # random rows: a few seconds per million for small parts; more is a typo, not a check


@dataclass(frozen=True)
class MergeRequest:
    """One merge: the mapping, where to write, and every option (the command line's, with its defaults).

    `mapping` is a mapping file, or (for `verify`) the resolved mapping a merged file records.
    `from_cli` only changes how errors name an option: `--rows` on the command line, `rows=` in Python.
    """

    mapping: Path | FeatureMapping
    out: Path = Path("merged.onnx")
    models: tuple[Path, ...] = ()  # replace the mapping's paths in order (MODEL arguments)
    combiner: str | None = None
    weights: tuple[float, ...] | None = None
    keep_outputs: bool = False
    verify: bool = True
    rows: int = DEFAULT_ROWS
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    opset: int | None = None
    ir_version: int | None = None  # the merged model's IR version (default: the parts' highest, or what opsets need)
    external_data: bool = False
    data: Path | None = None  # real rows: verified on, scored, and a stack's data when the mapping gives none
    target: str | None = None  # the --data column of true values
    from_cli: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Options verification can use: a NaN or negative tolerance fails everything with a message that
        contradicts itself, an infinite one passes everything; a billion rows is a typo, not a check."""
        if isinstance(self.rows, bool) or not 1 <= self.rows <= MAX_ROWS:
            raise usage(None, f"{self.option('rows')} must be between 1 and {MAX_ROWS}, not {self.rows}")
        for name, value in (("atol", self.atol), ("rtol", self.rtol)):
            if not math.isfinite(value) or value < 0:
                raise usage(None, f"{self.option(name)} must be a finite number >= 0, not {value}",
                            f"e.g. {self.option('atol', '1e-4')} {self.option('rtol', '1e-4')}")
        if isinstance(self.mapping, Path):  # a merge (verify passes the mapping a merged file records)
            for path in (self.mapping, self.data, *self.models):
                check_path_text(path)
            check_path_text(self.out, ExitCode.CANNOT_WRITE)
        if self.target is not None and self.data is None:
            raise usage(None, f"{self.option('target')} names a column of {self.option('data')}; "
                        f"give {self.option('data')} too")

    def option(self, name: str, value: str | None = None) -> str:
        """An option as the user writes it: `--weights 0.7,0.3` on the command line, `weights="0.7,0.3"` in Python."""
        return option(name, value, self.from_cli)


def option(name: str, value: str | None, from_cli: bool) -> str:
    if from_cli:
        flag = f"--{name.replace('_', '-')}"
        return flag if value is None else f"{flag} {value}"
    return name if value is None else f"{name}={value!r}"


def weights_of(weights: str | Sequence[float] | None, from_cli: bool = False) -> tuple[float, ...] | None:
    """Weights as the caller gave them: "0.7,0.3" (as on the command line) or numbers; finite and non-negative."""
    if weights is None:
        return None
    if isinstance(weights, str):
        return parse_weights(weights, from_cli)
    return tuple(_weight(w, from_cli) for w in weights)


def parse_weights(text: str, from_cli: bool = True) -> tuple[float, ...]:
    """"0.7,0.3" -> (0.7, 0.3); finite and non-negative."""
    return tuple(_weight(part, from_cli) for part in text.split(","))


def _weight(value: object, from_cli: bool) -> float:
    name = option("weights", None, from_cli)
    try:
        if isinstance(value, bool):
            raise TypeError("a bool is not a weight")
        w = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise usage(None, f"{name}: {str(value).strip()!r} is not a number",
                    f"e.g. {option('weights', '0.7,0.3', from_cli)}") from None
    if not math.isfinite(w) or w < 0:
        raise usage(None, f"{name}: {str(value).strip()!r} must be finite and >= 0")
    return w
