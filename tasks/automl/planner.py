"""Pick autofeat and model settings from the data's size and the job's memory budget.

autofeat's ``max_gb`` only subsamples rows against ``rows * generated_features * 4 bytes`` and
its own docs warn that intermediates take more (autofeat#24 generated 550k features from 501
rows). So the plan bounds the three things that drive memory and time directly: how many
columns feed feature engineering, how many features that can generate, and how many rows
autofeat and the models see. The memory model below was fitted on measurements (see
``FEATENG_*``); the plan's estimate is what the job compares with its budget before it starts.

The pipeline passes absolute RSS figures: ``budget_mb`` is the job's RSS at its start plus
its ``memory_budget_mb``, so a budget means the same in a fresh child and in one that grew
in earlier jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autofeat.feateng import n_cols_generated

from tasks.automl.options import Mode

MB = 1024 * 1024

#: peak of one autofeat fit above the baseline = fixed + rows x per-row + rows x generated x
#: bytes per cell, fitted to ``python -m bench.automl_memory`` (2 cores, autofeat 2.1.3):
#: two steps, 5k-40k rows x 136-528 generated features peaked 252-1248 MB, i.e. ~110 MB
#: + ~19 KB a row (step two's candidate combinations, whatever survives) + ~32 B a cell;
#: the constants are rounded up from the fit.
FEATENG_FIXED_MB = 120.0
FEATENG_ROW_BYTES = 20_000.0
#: one step (lightweight: 15-20 features): 2k and 20k rows peaked 77 and 100 MB
FEATENG_FIXED_ONE_STEP_MB = 80.0
FEATENG_ROW_BYTES_ONE_STEP = 1_000.0
#: bytes per generated cell at peak, as a multiple of autofeat's 4-byte estimate (its join
#: copies, the scaled copy and LassoLarsCV's float64 copies)
FEATENG_COPIES = 8.0
#: model search holds the float32 matrix, a float64 copy per fit and the CV fold views (the
#: held-out rows are transformed and scored afterwards, ``search.PREDICT_CHUNK_ROWS`` at a time)
MODEL_COPIES = 4.0
#: share of the free budget the loaded frame may take; the remaining 3/4 covers the matrix
#: copies above (a frame over a quarter of the budget cannot be trained on without sampling)
LOAD_SHARE = 0.25
#: forests cost rows x trees time: 200 trees on 32k rows took ~4 min of CV on 2 cores, so
#: beyond this gradient boosting (binned, early-stopped) is the only tree model planned
FOREST_MAX_ROWS = 20_000
#: fewer rows than this for autofeat and its 5-fold LassoLarsCV selection is guesswork
MIN_FEATENG_ROWS = 50
#: autofeat's selection for classification fits L1 LogisticRegressionCV with saga (5 folds x
#: 10 Cs, up to 100 epochs each, several fits a run), so its time grows with rows x columns it
#: sees x coefficient vectors (one for two classes, one per class beyond): digits, 1437 rows x
#: 142 columns x 10 classes (2.0M units), took 395 s of a 430 s job on 2 cores (~0.2 ms a
#: unit). Classification feeds autofeat only the columns it engineers from (the others join
#: its output unchanged) and samples rows to stay within this many units (~30 s)
CLASSIFICATION_SELECTION_UNITS = 150_000
#: rows per class that selection sample should keep: below it, fewer columns (so fewer
#: generated features) are engineered from instead
MIN_SELECTION_ROWS_PER_CLASS = 30


@dataclass(frozen=True)
class Tier:
    """Limits for one mode. Normal fits diabetes-sized tables in seconds on 2 cores."""

    feateng_steps: int
    featsel_runs: int
    transformations: tuple[str, ...]
    #: columns feeding feature engineering (the most target-correlated are chosen)
    max_feateng_cols: int
    #: features autofeat may generate (``n_cols_generated``); bounds featsel time and memory
    max_generated: int
    #: the same for classification, whose L1 logistic selection (saga) is ~10x slower per
    #: feature: wine with 300 candidates took 57 s on 2 cores, with 78 a few seconds
    max_generated_classification: int
    #: rows autofeat fits on; formulas found on a sample transfer to all rows (20k rows x 300
    #: features measured 665 MB above baseline and ~24 s on 2 cores)
    max_feateng_rows: int
    #: rows the model search trains on
    max_model_rows: int
    n_estimators: int
    candidates: tuple[str, ...]


NORMAL = Tier(
    feateng_steps=2,
    featsel_runs=2,
    transformations=("1/", "log", "sqrt", "^2"),
    max_feateng_cols=8,
    max_generated=300,
    max_generated_classification=80,
    max_feateng_rows=20_000,
    max_model_rows=1_000_000,
    n_estimators=200,
    candidates=("linear", "random_forest", "gradient_boosting"),
)
LIGHTWEIGHT = Tier(
    feateng_steps=1,
    featsel_runs=1,
    transformations=("log", "sqrt", "^2"),
    max_feateng_cols=5,
    max_generated=20,
    max_generated_classification=20,
    max_feateng_rows=2_000,
    max_model_rows=200_000,
    n_estimators=50,
    candidates=("linear", "gradient_boosting"),
)
TIERS: dict[Mode, Tier] = {"normal": NORMAL, "lightweight": LIGHTWEIGHT}


@dataclass(frozen=True)
class Plan:
    """Settings for one attempt, with the peak it is expected to reach."""

    mode: Mode
    feateng_steps: int
    featsel_runs: int
    transformations: tuple[str, ...]
    feateng_cols: int
    feateng_rows: int
    max_gb: float
    max_generated: int
    model_rows: int
    candidates: tuple[str, ...]
    n_estimators: int
    n_jobs: int
    estimated_peak_mb: float
    #: the budget leaves fewer than ``MIN_FEATENG_ROWS`` rows for autofeat or the models
    too_few_rows: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_rows(bytes_per_row: float, budget_mb: float, baseline_mb: float) -> int:
    """Most rows worth loading: the shrunk frame may take ``LOAD_SHARE`` of the free budget."""
    free = max(budget_mb - baseline_mb, 0.0) * MB
    return max(1, int(free * LOAD_SHARE / max(bytes_per_row, 1.0)))


def plan_job(
    *,
    mode: Mode,
    task_type: str,
    rows: int,
    features: int,
    budget_mb: float,
    baseline_mb: float,
    n_jobs: int,
    classes: int = 2,
) -> Plan:
    """The ``mode`` tier shrunk until its estimated peak fits ``budget_mb``.

    Args:
        mode: which tier's limits to start from.
        task_type: "regression" or "classification" (selection cost differs).
        rows: training rows available.
        features: numeric feature columns after encoding.
        budget_mb: what the whole process may reach (RSS).
        baseline_mb: RSS before the job (interpreter, libraries, loaded frame).
        n_jobs: joblib workers allowed by the worker's settings.
        classes: distinct classes (classification), which multiply autofeat's selection time.
    """
    tier = TIERS[mode]
    steps = tier.feateng_steps
    cols = min(features, tier.max_feateng_cols)
    n_trans = len(tier.transformations)
    limit = tier.max_generated
    if task_type == "classification":
        limit = tier.max_generated_classification
    while cols > 1 and n_cols_generated(cols, steps, n_trans) > limit:
        cols -= 1
    selection_rows = rows
    if task_type == "classification":
        cols, selection_rows = _selection_sized(cols, rows, classes, steps, n_trans)
    generated = n_cols_generated(max(cols, 1), steps, n_trans)
    free_mb = max(budget_mb - baseline_mb, 1.0)
    feateng_rows = min(
        rows,
        tier.max_feateng_rows,
        selection_rows,
        _feateng_rows_fitting(free_mb, generated, steps),
    )
    final_features = features + generated  # upper bound: originals plus every new feature
    model_rows = min(rows, tier.max_model_rows, _model_rows_fitting(free_mb, final_features))
    feateng_mb = _feateng_mb(feateng_rows, generated, steps)
    model_mb = model_rows * final_features * 4 * MODEL_COPIES / MB
    estimated = baseline_mb + max(feateng_mb, model_mb)
    least = min(rows, MIN_FEATENG_ROWS)
    too_few_rows = feateng_rows < least or model_rows < least  # nothing left to learn from
    candidates = tier.candidates
    if model_rows > FOREST_MAX_ROWS:
        candidates = tuple(c for c in candidates if c != "random_forest")
    return Plan(
        mode=mode,
        feateng_steps=steps,
        featsel_runs=tier.featsel_runs,
        transformations=tier.transformations,
        feateng_cols=cols,
        feateng_rows=max(feateng_rows, 1),
        # autofeat's own guard, set to our share so it never subsamples behind our back
        max_gb=round(max(feateng_rows * generated * 4 / 1e9, 0.001), 3),
        max_generated=generated,
        model_rows=max(model_rows, 1),
        candidates=candidates,
        n_estimators=tier.n_estimators,
        n_jobs=n_jobs if mode == "normal" else 1,
        estimated_peak_mb=round(estimated, 1),
        too_few_rows=too_few_rows,
    )


def _selection_sized(
    cols: int, rows: int, classes: int, steps: int, n_trans: int
) -> tuple[int, int]:
    """Columns to engineer from and rows to sample so a classification selection stays
    within ``CLASSIFICATION_SELECTION_UNITS``, with fewer columns before fewer rows per class."""
    vectors = 1 if classes <= 2 else classes

    def fitting(c: int) -> int:
        return int(
            CLASSIFICATION_SELECTION_UNITS / ((c + n_cols_generated(c, steps, n_trans)) * vectors)
        )

    floor = min(rows, MIN_SELECTION_ROWS_PER_CLASS * max(classes, 2))
    while cols > 1 and fitting(cols) < floor:
        cols -= 1
    return cols, fitting(max(cols, 1))


def _fixed_mb(steps: int) -> float:
    return FEATENG_FIXED_ONE_STEP_MB if steps == 1 else FEATENG_FIXED_MB


def _feateng_row_bytes(generated: int, steps: int) -> float:
    per_row = FEATENG_ROW_BYTES_ONE_STEP if steps == 1 else FEATENG_ROW_BYTES
    return per_row + generated * 4 * FEATENG_COPIES


def _feateng_mb(rows: int, generated: int, steps: int) -> float:
    return _fixed_mb(steps) + rows * _feateng_row_bytes(generated, steps) / MB


def _feateng_rows_fitting(free_mb: float, generated: int, steps: int) -> int:
    room = (free_mb - _fixed_mb(steps)) * MB
    return max(int(room / _feateng_row_bytes(generated, steps)), 0) if room > 0 else 0


def _model_rows_fitting(free_mb: float, final_features: int) -> int:
    return max(int(free_mb * MB / (final_features * 4 * MODEL_COPIES)), 0)


def fits(plan: Plan, budget_mb: float) -> bool:
    """Whether the plan's estimate stays inside the budget (with no rows left, it cannot)."""
    # a plan sized to the budget exactly can round up by 0.05 MB (estimates keep 0.1 MB)
    return not plan.too_few_rows and plan.estimated_peak_mb <= budget_mb + 0.05


def shortfall(plan: Plan, budget_mb: float, baseline_mb: float) -> str:
    """Why ``plan`` does not fit, in the job's own terms (MB above ``baseline_mb``)."""
    budget = budget_mb - baseline_mb
    needed = plan.estimated_peak_mb - baseline_mb
    if plan.too_few_rows:
        return (
            f"the {plan.mode} plan needs ~{needed:.0f} MB before its first rows and would "
            f"leave fewer than {MIN_FEATENG_ROWS} rows within the {budget:.0f} MB budget"
        )
    return f"the {plan.mode} plan needs ~{needed:.0f} MB, over the {budget:.0f} MB budget"
