"""Reference values for Voxel's baseline statistics, computed by SciPy and statsmodels.

Writes, next to this file:

- wilcoxon_cases.json: paired samples x, y and, for several calls of
  scipy.stats.wilcoxon(x, y, **kwargs), the statistic and p-value SciPy returns. Every call of
  every case is asserted by operator/tests/wilcoxon_reference.rs to 1e-9 absolute.
- holm_cases.json: p-values and their Holm-adjusted values from
  statsmodels.stats.multitest.multipletests(p, alpha=0.05, method='holm')[1].
- compare_baseline_metrics.csv, compare_candidate_metrics.csv: two trainer metrics.csv files
  (12 paired subjects, 2 structures; one subject only in the candidate; some NaN and inf).
- compare_expected.json: for every structure and metric, the number of finite pairs and what
  scipy.stats.wilcoxon(candidate, baseline) returns on them, and the Holm-adjusted p-values
  across the structures (per metric), as `voxel compare` must report them.

Run it (the random draws are seeded, so the output is the same every time):

    python3 -m venv ~/.cache/voxel/stats-venv
    ~/.cache/voxel/stats-venv/bin/pip install scipy==1.17.1 numpy==2.4.6 statsmodels==0.15.0
    ~/.cache/voxel/stats-venv/bin/python operator/tests/data/stats/generate_wilcoxon_cases.py

JSON conventions: a p-value that SciPy returns as NaN (all differences zero under the normal
approximation) is written as null; a call that raises is written with "error" instead.
"""

import csv
import json
import math
from pathlib import Path

import numpy as np
import scipy
import statsmodels
from scipy import stats
from statsmodels.stats.multitest import multipletests

HERE = Path(__file__).resolve().parent
SEED = 20260501

# Every case is run with each of these keyword sets (the first one is SciPy's defaults).
CALLS = [
    {},
    {"correction": True},
    {"method": "exact"},
    {"method": "asymptotic"},
    {"method": "asymptotic", "correction": True},
    {"zero_method": "pratt"},
    {"zero_method": "pratt", "method": "asymptotic"},
    {"zero_method": "zsplit"},
    {"zero_method": "zsplit", "method": "asymptotic"},
]


def auto_method(x, y):
    """The method SciPy 1.17's method='auto' picks (scipy/stats/_wilcoxon.py): n counts every
    pair, zeros included; asymptotic above 50 pairs; exact without ties and zeros; with ties or
    zeros a full permutation test up to 13 pairs, else asymptotic."""
    d = np.asarray(x, float) - np.asarray(y, float)
    n = len(d)
    nonzero = np.abs(d[d != 0])
    has_ties = len(np.unique(nonzero)) < len(nonzero)
    has_zeros = bool(np.any(d == 0))
    if n > 50:
        return "asymptotic"
    if not (has_ties or has_zeros):
        return "exact"
    return "permutation" if n <= 13 else "asymptotic"


def run_calls(x, y):
    results = []
    for kwargs in CALLS:
        entry = {"kwargs": kwargs}
        try:
            res = stats.wilcoxon(x, y, **kwargs)
            p = float(res.pvalue)
            entry["statistic"] = float(res.statistic)
            entry["pvalue"] = None if math.isnan(p) else p
        except Exception as e:  # recorded so that a change of behaviour is visible
            entry["error"] = f"{type(e).__name__}: {e}"
        results.append(entry)
    return results


def dice_like(rng, n, mean=0.85, spread=0.04):
    return np.clip(rng.normal(mean, spread, n), 0.0, 1.0)


def wilcoxon_cases(rng):
    cases = []

    def add(name, x, y, note):
        x = [float(v) for v in x]
        y = [float(v) for v in y]
        cases.append({
            "name": name,
            "note": note,
            "x": x,
            "y": y,
            "auto_method": auto_method(x, y),
            "calls": run_calls(x, y),
        })

    # No ties, no zeros, 5..50 pairs: exact distribution under 'auto'.
    for n, effect in [(5, 0.02), (6, 0.02), (8, 0.0), (10, 0.01), (15, 0.005), (20, 0.0),
                      (30, 0.004), (40, -0.003), (50, 0.002)]:
        y = dice_like(rng, n)
        x = y + rng.normal(effect, 0.01, n)
        add(f"no_ties_n{n}", x, y, "continuous Dice-like values; exact under auto")

    # Ties and zeros with at most 13 pairs: exhaustive permutation test under 'auto'.
    y = np.round(dice_like(rng, 6), 2)
    add("ties_n6", y + np.array([0.01, 0.01, 0.02, -0.01, 0.03, 0.02]), y,
        "rounded to 0.01 so |d| ties; permutation under auto")
    y = rng.integers(10, 30, 9)
    add("ties_and_zero_n9", y + rng.integers(-3, 6, 9), y, "integers; permutation under auto")
    y = np.round(dice_like(rng, 12), 2)
    x = np.round(y + rng.normal(0.01, 0.015, 12), 2)
    add("rounded_n12", x, y, "Dice rounded to 0.01; permutation under auto")
    d = np.array([2, 0, 3, 6, -2, 4, 2, 7, -3, 8, 7, 5, 0], float)
    add("two_zeros_n13", 20 + d, np.full(13, 20.0), "13 pairs, 2 zeros: permutation under auto")

    # Ties with 14..60 pairs: normal approximation with the tie correction under 'auto'.
    for n in [14, 20, 35, 50, 60]:
        y = rng.integers(0, 40, n).astype(float)
        x = y + rng.integers(-4, 7, n)
        add(f"ties_n{n}", x, y, "integer distances in mm; asymptotic under auto")
    d = np.array([2, 0, 3, 6, -2, 4, 2, 7, -3, 8, 7, 5, 1, 9], float)
    add("one_zero_n14", 20 + d, np.full(14, 20.0), "14 pairs with a zero: asymptotic under auto")

    # More than 50 pairs without ties: normal approximation under 'auto'.
    for n, effect in [(51, 0.002), (80, 0.0), (200, 0.001)]:
        y = dice_like(rng, n)
        x = y + rng.normal(effect, 0.01, n)
        add(f"no_ties_n{n}", x, y, "continuous; asymptotic under auto because n > 50")

    # Many zeros.
    y = np.round(dice_like(rng, 10), 3)
    x = y.copy()
    x[:4] += np.array([0.011, 0.023, -0.004, 0.017])
    add("six_zeros_n10", x, y, "6 of 10 pairs equal; permutation under auto")
    y = rng.integers(5, 25, 20).astype(float)
    x = y.copy()
    x[:8] += np.array([1, 2, 3, -1, 4, 2, 5, 1])
    add("twelve_zeros_n20", x, y, "12 of 20 pairs equal; asymptotic under auto")
    y = np.round(dice_like(rng, 60), 3)
    x = y.copy()
    x[:20] += np.round(rng.normal(0.004, 0.01, 20), 3)
    add("forty_zeros_n60", x, y, "40 of 60 pairs equal; asymptotic under auto")

    # Every difference zero.
    y = np.round(dice_like(rng, 8), 3)
    add("all_zero_n8", y, y, "no non-zero pair; permutation under auto gives p = 1")
    y = np.round(dice_like(rng, 20), 3)
    add("all_zero_n20", y, y, "no non-zero pair; asymptotic under auto gives NaN (null)")

    # Small samples that can never reach p < 0.05.
    add("single_pair", [0.9], [0.8], "one pair")
    add("all_positive_n5", [5.0, 6, 7, 8, 9], [1.0, 1, 1, 1, 1], "the most extreme n = 5")
    return cases


def holm_cases():
    inputs = [
        [0.01, 0.04, 0.03, 0.005, 0.2],
        [0.04, 0.02],
        [0.5],
        [0.3, 0.3, 0.001, 0.9],
        [0.02, 0.02, 0.02],
        [0.3, 0.6, 0.7],
    ]
    return [
        {"pvalues": p, "holm": [float(v) for v in multipletests(p, alpha=0.05, method="holm")[1]]}
        for p in inputs
    ]


METRICS = ["dice", "hausdorff_mm", "hausdorff95_mm", "hausdorff95_max_directed_mm",
           "mean_surface_distance_mm"]
COLUMNS = ["subject", "structure"] + METRICS


def metrics_rows(rng, subjects, structures, dice_gain):
    """Rows shaped like the trainer's metrics.csv; values rounded to 4 decimals."""
    rows = []
    for subject in subjects:
        for structure in structures:
            dice = float(np.clip(rng.normal(0.84, 0.04) + dice_gain[structure], 0, 1))
            hd = float(rng.uniform(1.0, 6.0) * (1.2 - dice))
            hd95 = hd * float(rng.uniform(0.5, 0.9))
            hd95_max = hd95 * float(rng.uniform(1.0, 1.3))
            msd = hd95 * float(rng.uniform(0.2, 0.4))
            rows.append([subject, structure] + [round(v, 4) for v in
                                                (dice, hd, hd95, hd95_max, msd)])
    return rows


def write_metrics_csv(path, rows):
    def text(v):
        if isinstance(v, str):
            return v
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)

    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([[text(v) for v in row] for row in rows])


def compare_fixture(rng):
    structures = ["anterior", "posterior"]
    subjects = [f"hippocampus_{i:03d}" for i in range(1, 13)]
    baseline = metrics_rows(rng, subjects, structures, {"anterior": 0.0, "posterior": 0.0})
    # The candidate gains Dice on every anterior crop and is close on posterior ones.
    candidate = []
    for row in baseline:
        gain = 0.03 if row[1] == "anterior" else 0.0
        # Dice to 3 decimals, so that some differences tie (a permutation test under 'auto').
        dice = round(min(1.0, row[2] + gain + float(rng.normal(0, 0.012))), 3)
        scale = float(rng.uniform(0.7, 0.95)) if row[1] == "anterior" else float(
            rng.uniform(0.85, 1.15))
        candidate.append(row[:2] + [dice] + [round(v * scale, 4) for v in row[3:]])
    for row in baseline:
        row[2] = round(row[2], 3)
    # Both models score subject 3's posterior structure alike: a zero difference.
    i = next(i for i, r in enumerate(candidate) if r[:2] == ["hippocampus_003", "posterior"])
    candidate[i][2] = next(r[2] for r in baseline if r[:2] == ["hippocampus_003", "posterior"])
    # The candidate missed the posterior structure of subject 5 entirely: Dice 0, distances inf.
    i = next(i for i, r in enumerate(candidate) if r[:2] == ["hippocampus_005", "posterior"])
    candidate[i] = candidate[i][:2] + [0.0] + [math.inf] * 4
    # Subject 9's anterior structure is empty in both prediction and truth for the baseline.
    i = next(i for i, r in enumerate(baseline) if r[:2] == ["hippocampus_009", "anterior"])
    baseline[i] = baseline[i][:2] + [math.nan] * 5
    # A subject only the candidate evaluated; it must not be paired.
    candidate += metrics_rows(rng, ["hippocampus_013"], structures,
                              {"anterior": 0.0, "posterior": 0.0})

    write_metrics_csv(HERE / "compare_baseline_metrics.csv", baseline)
    write_metrics_csv(HERE / "compare_candidate_metrics.csv", candidate)

    base = {(r[0], r[1]): r[2:] for r in baseline}
    cand = {(r[0], r[1]): r[2:] for r in candidate}
    tests = []
    for m, metric in enumerate(METRICS):
        family = []
        for structure in structures:
            pairs = [(cand[(s, structure)][m], base[(s, structure)][m]) for s in subjects]
            pairs = [(c, b) for c, b in pairs if math.isfinite(c) and math.isfinite(b)]
            x = [c for c, _ in pairs]
            y = [b for _, b in pairs]
            d = np.asarray(x) - np.asarray(y)
            res = stats.wilcoxon(x, y)
            tests.append({
                "structure": structure,
                "metric": metric,
                "pairs": len(pairs),
                "nonzero_pairs": int(np.count_nonzero(d)),
                "median_difference": float(np.median(d)),
                "statistic": float(res.statistic),
                "pvalue": float(res.pvalue),
                "method": auto_method(x, y),
            })
            family.append(tests[-1])
        # Every test here has at least 6 non-zero pairs, so all enter the Holm family.
        assert all(t["nonzero_pairs"] >= 6 for t in family)
        adjusted = multipletests([t["pvalue"] for t in family], alpha=0.05, method="holm")[1]
        for t, p in zip(family, adjusted):
            t["pvalue_holm"] = float(p)
    return {"alpha": 0.05, "tests": tests}


def main():
    rng = np.random.default_rng(SEED)
    versions = {"scipy": scipy.__version__, "numpy": np.__version__,
                "statsmodels": statsmodels.__version__}
    cases = wilcoxon_cases(rng)
    with open(HERE / "wilcoxon_cases.json", "w") as f:
        json.dump({"generated_by": "generate_wilcoxon_cases.py", "seed": SEED,
                   "versions": versions, "cases": cases}, f, indent=1, allow_nan=False)
        f.write("\n")
    with open(HERE / "holm_cases.json", "w") as f:
        json.dump({"generated_by": "generate_wilcoxon_cases.py", "versions": versions,
                   "call": "statsmodels.stats.multitest.multipletests(p, alpha=0.05, "
                           "method='holm')[1]",
                   "cases": holm_cases()}, f, indent=1, allow_nan=False)
        f.write("\n")
    expected = compare_fixture(rng)
    with open(HERE / "compare_expected.json", "w") as f:
        json.dump({"generated_by": "generate_wilcoxon_cases.py", "versions": versions,
                   **expected}, f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"{len(cases)} Wilcoxon cases, {sum(len(c['calls']) for c in cases)} calls; "
          f"versions {versions}")


if __name__ == "__main__":
    main()
