"""The comparison report of a multirun: `python -m retina_gans.report <multirun dir> [--out DIR]`.

Reads every job folder of the sweep (also while it runs, or after some jobs failed: the report says which),
and writes `report.md` (figures beside it), `report.html` (figures inline), the figures, and `runs.csv`
(one row per run: every number of the tables, as read from the logs).

runs.py reads the jobs, stats.py does the seed statistics, figures.py draws, render.py writes Markdown/HTML.
"""

import json
import math
import re
import shlex
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pandas as pd
from scipy.stats import t as scipy_t

from retina_gans import variants
from retina_gans.compare import git_commit, machine
from retina_gans.overrides import override
from retina_gans.report import figures
from retina_gans.report.figures import model_name
from retina_gans.report.render import Doc
from retina_gans.report.runs import COMPLETE, Run, Sweep, load_sweep
from retina_gans.report.stats import Summary, pairwise_welch, summarize
from retina_gans.report.stats import holm as stats_holm
from retina_gans.metrics.memorization import COPY_QUANTILE
from retina_gans.metrics.registry import METRICS, configured_main, direction, extractor_of_key, metric_for_key

EXTRACTOR_ORDER = {"retina_v2": 0, "retina": 1, "inception": 2}

# The blog posts' numbers (../shared/seeds; in each variant's card, `variant.blog`): one run each, Inception-based
# presumably, protocol unknown.
BLOG_HEADER = "blog (Inception-based?, 1 run, protocol not comparable)"
C2ST_SAMPLES = 500  # per side, for the report's two-sample tests (cost grows with it)
BUDGET_NOTES = {
    "blog": "`experiment=blog`: the blog's setup, 50 epochs for every model, so the WGANs (n_critic 5) make "
            "5x fewer generator steps than LS-GAN.",
    "blog_equal_steps": "`experiment=blog_equal_steps`: the blog's setup with equal generator budgets: "
                        "LS-GAN 50 epochs, the WGANs 50 x n_critic = 250 epochs (the same generator steps).",
}
PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics", "torch-fidelity",
            "numpy", "pandas", "scipy", "matplotlib", "tensorboard")


def fmt(value: float | None) -> str:
    """4 significant digits (trailing zeros kept); whole numbers (step counts) and values >= 1000 without decimals."""
    if value is None or not math.isfinite(value):
        return "missing"
    if float(value).is_integer() or abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:#.4g}"


class ReportError(ValueError):
    """The folder given is not one a report can be made of; the message says which to pass."""


def _decimals(mean: float, sd: float) -> int:
    """Decimals that show the sd with 2 significant digits, but no more than one past the mean's 4 significant ones
    (`1.004 ± 7.7e-05` -> `1.0040 ± 0.0001`, `0.8706 ± 0.02129` -> `0.871 ± 0.021`)."""
    sd_decimals = 1 - math.floor(math.log10(sd)) if sd > 0 else 0
    mean_decimals = 3 - math.floor(math.log10(abs(mean))) if mean else 4
    return max(0, min(sd_decimals, mean_decimals + 1))


def fmt_summary(s: Summary | None, total: int, floor: float | None = None) -> tuple[str, str]:
    """('mean ± sd', '[low, high]') cells, rounded to the sd; n shown when not every seed contributed. The interval is
    cut at `floor` for quantities that cannot go below it (FID, memorization, times and counts 0; IS 1)."""
    if s is None:
        return "missing", "missing"
    of = "" if s.n == total else f" (n={s.n} of {total})"
    if s.n == 1:
        return f"{fmt(s.mean)}{of}", "n/a (1 seed)"
    if not math.isfinite(s.sd) or s.sd == 0:
        return f"{fmt(s.mean)} ± {fmt(s.sd)}{of}", f"[{fmt(s.low)}, {fmt(s.high)}]"
    d = _decimals(s.mean, s.sd)
    low = max(s.low, floor) if floor is not None else s.low
    cut = "*" if floor is not None and s.low < floor else ""
    return f"{s.mean:.{d}f} ± {s.sd:.{d}f}{of}", f"[{low:.{d}f}{cut}, {s.high:.{d}f}]"


def metric_columns(runs: list[Run]) -> list[tuple[str, str, str]]:
    """(label, log key, direction) of every registered metric the runs logged, in registry order (main extractor
    first); *_std companions are left out. One list for the tables, the tests and the figures."""
    logged = {c for r in runs for c in r.epochs.columns if c.startswith("val/") and not c.endswith("_std")}
    columns = []
    for metric in METRICS.values():
        for template, better in zip(metric.keys, metric.better):
            if template.endswith("_std"):
                continue
            prefix, _, suffix = template.partition("{ext}")
            found = [k for k in logged if metric_for_key(k) is metric and (
                k.removeprefix("val/") == template if "{ext}" not in template
                else k.startswith("val/" + prefix) and k.endswith(suffix))]
            for key in sorted(found, key=lambda k: (EXTRACTOR_ORDER.get(extractor_of_key(k), 9), k)):
                ext = extractor_of_key(key)
                name = key.removeprefix("val/")
                label = name.replace(f"_{ext}", "") if ext else name
                label = {"fid": "FID", "kid_mean": "KID", "is": "IS"}.get(label, label)
                columns.append((f"{label} ({ext})" if ext else label, key, better))
    return columns


def floor_of(key: str) -> float | None:
    """The lowest possible value (intervals are cut there): KID's unbiased estimate can be negative, IS >= 1."""
    if "kid_" in key:
        return None
    return 1.0 if "/is_" in key else 0.0


def main_metric(runs: list[Run]) -> str:
    """`val/<metrics.main>` of the runs (their configs), else the default; val/fid_retina for runs made before it."""
    mains = {((r.config or {}).get("metrics") or {}).get("main") for r in runs} - {None}
    key = f"val/{mains.pop() if len(mains) == 1 else configured_main()}"
    if not any(key in r.epochs.columns for r in runs) and any("val/fid_retina" in r.epochs.columns for r in runs):
        return "val/fid_retina"  # runs from before retina_v2
    return key


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "none"




def _by_model(runs: list[Run]) -> dict[str, list[Run]]:
    order = {m: i for i, m in enumerate(variants.variant_names())}
    models = sorted({r.model for r in runs}, key=lambda m: (order.get(m, 99), m))
    return {m: sorted((r for r in runs if r.model == m), key=lambda r: (len(r.seed), r.seed)) for m in models}


def _minutes(run: Run) -> float | None:
    return run.wall_time_s / 60 if run.wall_time_s is not None else None


def run_rows(sweep: Sweep, columns: list[tuple[str, str, str]]) -> pd.DataFrame:
    """One row per run with every number the report shows, read from its logs (None where not logged)."""
    rows = []
    for run in sweep.runs:
        row = {"job": run.job, "section": run.section, "model": run.model, "seed": run.seed, "status": run.status,
               "detail": run.detail, "max_epochs": run.max_epochs,
               "generator_steps": run.final("train/generator_steps"), "critic_steps": run.final("train/critic_steps"),
               "wall_time_min": _minutes(run), "c2st_final": run.c2st}
        for _, key, better in columns:
            name = key.removeprefix("val/")
            best = run.best(key, better == "lower") if better in ("lower", "higher") else None
            row[f"{name}_final"] = run.final(key)
            row[f"{name}_best"] = best[0] if best else None
            row[f"{name}_best_epoch"] = best[1] if best else None
        rows.append(row)
    return pd.DataFrame(rows)


def _two_sample_tests(sweep: Sweep) -> None:
    """The classifier two-sample test (registry's `c2st`) of each complete run's final model: 500 samples of its
    last.ckpt (noise seed 0) against the first 500 real train images (half of each to train the classifier, half to
    test it). Seconds per run on a CPU: too slow for validation; `evaluate` runs it on the whole split."""
    import sys

    from retina_gans.metrics.c2st import c2st_accuracy
    from retina_gans.models import GAN
    from retina_gans.sample import generate_samples, grade_labels

    for run in sweep.runs:
        last = run.path / "checkpoints" / "last.ckpt" if run.path is not None else None
        if run.status != COMPLETE or last is None or not last.is_file():
            continue
        try:
            gan = GAN.from_checkpoint(last)
            real = figures.real_samples(last, n=C2ST_SAMPLES)
            grades = grade_labels(gan, None, len(real))  # conditional: the train split's grade mix; else None
            run.c2st = float(c2st_accuracy(real, generate_samples(gan, len(real), 0, 500, grades)))
        except Exception as error:  # noqa: BLE001 - an unreadable checkpoint or missing data: the cell shows *missing*
            print(f"report: no two-sample test for {run.job} ({type(error).__name__}: {error})", file=sys.stderr)
            run.c2st = None


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, c2st: bool = True) -> Path:
    """Write the report of the multirun in `sweep_dir` to `out_dir` (default `<sweep_dir>/report`); return it."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    sweep = load_sweep(sweep_dir)
    figures.use_cards(sweep.runs)
    if not sweep.runs:  # checked before anything is written
        raise ReportError(f"{sweep_dir} holds no runs of a multirun (no job folders, no multirun.yaml); pass the "
                          "folder compare or --multirun wrote, e.g. logs/compare/<time> or logs/train/multiruns/<time>")
    out.mkdir(parents=True, exist_ok=True)
    columns = metric_columns(sweep.runs)
    main = main_metric(sweep.runs)
    if c2st:
        _two_sample_tests(sweep)
    table = run_rows(sweep, columns)
    table.to_csv(out / "runs.csv", index=False)

    doc = Doc()
    doc.h(1, f"{' vs '.join(model_name(m) for m in _by_model(sweep.runs))} on RetinaMNIST: multi-seed comparison")
    counts = table["status"].value_counts()
    doc.p(f"Multirun `{sweep_dir}`: {len(sweep.runs)} runs: "
          + ", ".join(f"{n} {status}" for status, n in counts.items()) + ". "
          f"Report written {datetime.now().isoformat(timespec='seconds')}.")
    if (table["status"] != COMPLETE).any():
        doc.p("**Partial report.** Only complete runs (trained to `trainer.max_epochs`, not diverged) enter the "
              "means, intervals and tests; the others are listed in *Runs* with their state and latest values.")
    _answer(doc, sweep, main, columns)
    _how_to_read(doc, sorted({sum(r.status == COMPLETE for r in rs) for rs in _by_model(sweep.runs).values()} - {0, 1}))
    _across_sections(doc, sweep, columns, main)
    _runs_section(doc, sweep, table, main, next((c[0] for c in columns if c[1] == main), main.removeprefix("val/")))
    for section in dict.fromkeys(r.section for r in sweep.runs):
        _section(doc, section, [r for r in sweep.runs if r.section == section], columns, main, out)
    _utility_section(doc, sweep)
    _provenance(doc, sweep)

    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(out, "GAN comparison on RetinaMNIST"))
    return out


def _better(a: float, b: float, better: str) -> bool:
    target = {"half": 0.5, "one": 1.0}.get(better)
    if target is not None:
        return abs(a - target) < abs(b - target)
    return a < b if better == "lower" else a > b


# Checks against the real images' own level, not rankings: a copy fraction of 0.001 is no worse than 0 (unseen real
# images score COPY_QUANTILE by construction), so the answer says whether a model copies instead of who is "first".
COPYING_KEYS = ("val/memorization", "val/copy_fraction")


def _copying(by_model: dict[str, list[Run]]) -> str:
    """One clause on copying for the answer: which models' mean final copy fraction exceeds unseen real images'
    (COPY_QUANTILE), or that none does, with the range of copy fractions and memorization ratios."""
    values = {key: {m: [v for r in rs if r.status == COMPLETE and (v := r.final(key)) is not None]
                    for m, rs in by_model.items()} for key in COPYING_KEYS}
    fractions, ratios = values["val/copy_fraction"], values["val/memorization"]
    if not any(fractions.values()):
        return ""
    copiers = [model_name(m) for m, v in fractions.items() if v and sum(v) / len(v) > COPY_QUANTILE]
    every = [x for v in fractions.values() for x in v]
    span = f"copy fraction {min(every):.3g}-{max(every):.3g} against unseen real images' {COPY_QUANTILE:g}"
    mems = [x for v in ratios.values() for x in v]
    if mems:
        span += f"; memorization {min(mems):.3g}-{max(mems):.3g}"
    if copiers:
        verb = "copies" if len(copiers) == 1 else "copy"
        return f"**{', '.join(copiers)} {verb} training images** more often than unseen real images are near them ({span})"
    return f"no model copies its training images ({span})"


def _answer(doc: Doc, sweep: Sweep, main: str, columns: list[tuple[str, str, str]]) -> None:
    """The answer per budget: which model has the best final main metric, whether its lead exceeds the seed spread,
    which model each other metric puts first (where they disagree, said so), and the caveats."""
    doc.h(2, "Answer")
    main_label = next((label for label, key, _ in columns if key == main), main.removeprefix("val/"))
    ext = extractor_of_key(main)
    others = [(label, key, better) for label, key, better in columns if key != main and better != "one"
              and (extractor_of_key(key) in (None, ext)) and key not in COPYING_KEYS]
    sentences = []
    sections = list(dict.fromkeys(r.section for r in sweep.runs))
    for section in sections:
        by_model = _by_model([r for r in sweep.runs if r.section == section])
        complete = {m: [r.final(main) for r in rs if r.status == COMPLETE] for m, rs in by_model.items()}
        stats = {m: s for m, values in complete.items() if (s := summarize(values)) is not None}
        if len(by_model) < 2:  # an ablation's or a budget's one-model section: *Across sections* compares it
            continue
        if len(stats) < 2:
            sentences.append(f"**{section}:** no answer yet: fewer than two models have a complete run with a final "
                             f"{main_label}.")
            continue
        best = min(stats, key=lambda m: stats[m].mean)
        tests = {(c.a, c.b): c for c in pairwise_welch(complete)}
        leads = []
        for other in [m for m in stats if m != best]:
            c = tests.get((best, other)) or tests.get((other, best))
            if c is None:
                leads.append(f"over {model_name(other)} not tested (fewer than 2 seeds)")
            else:
                verdict = "exceeds" if c.p_holm < 0.05 else "does not exceed"
                leads.append(f"over {model_name(other)} {verdict} the seed spread (Holm p = {c.p_holm:.2g})")
        firsts, disagree, within, untested = [], [], [], False
        for label, key, better in others + [("C2ST accuracy", "c2st", "half")]:
            raw = {m: [r.c2st if key == "c2st" else r.final(key) for r in rs if r.status == COMPLETE]
                   for m, rs in by_model.items()}
            values = {m: v for m, vs in raw.items() if (v := summarize(vs)) is not None}
            if len(values) < 2:
                continue
            tops = [m for m in values if all(not _better(values[o].mean, values[m].mean, better) for o in values)]
            if len(tops) == len(values):  # every model level (e.g. a copy fraction of 0 for all): it ranks no one
                firsts.append(f"{label}: all tied")
                continue
            firsts.append(f"{label}: {', '.join(model_name(m) for m in tops)}{' (tied)' if len(tops) > 1 else ''}")
            if best not in tops and best in values:
                # a disagreement is one beyond the seed spread: the metric's first against the main metric's best
                # (Welch; untestable with < 2 seeds or no spread at all: counted as a disagreement)
                test = pairwise_welch({m: raw[m] for m in (tops[0], best)})
                tested = bool(test) and math.isfinite(test[0].p)
                if tested and test[0].p >= 0.05:
                    within.append(f"{label} (p = {test[0].p:.2g})")
                else:
                    disagree.append(f"{label} ({f'p = {test[0].p:.2g}' if tested else 'untested'})")
                    untested = untested or not tested
        seeds = sorted({s.n for s in stats.values()})
        caveats = [f"{'-'.join(map(str, seeds))} seed{'s' if seeds[-1] > 1 else ''} per model (low power: *not "
                   "shown* is not *equal*)", f"{main_label} is in the in-domain embedding checked in the README's "
                   "validity table, not Inception's"]
        if any(r.status != COMPLETE for r in sweep.runs if r.section == section):
            caveats.append("some runs are not complete and are left out")
        copying = _copying(by_model)
        if copying:
            caveats.append(copying)
        cells = ", ".join(f"{model_name(m)} {fmt_summary(stats[m], stats[m].n)[0]}"
                          for m in sorted(stats, key=lambda m: stats[m].mean))
        level = (f" Where the others put another model first, {model_name(best)} is behind it only within the seed "
                 f"spread (Welch): {', '.join(within)}." if within else "")
        agreement = (f"The other metrics put first: {'; '.join(firsts)}. "
                     + (f"**They disagree with {main_label} on {', '.join(disagree)}** (beyond the seed spread, "
                        f"Welch{'; untested: fewer than 2 seeds or no spread' if untested else ''}): read those before calling a winner." if disagree
                        else f"None disagrees with {main_label} beyond the seed spread." if within
                        else f"Every one agrees with {main_label}.") + level) if firsts else ""
        sentences.append(f"**{section}:** {model_name(best)} has the lowest final {main_label} ({cells}); its lead "
                         f"{'; '.join(leads)}. {agreement} Caveats: {'; '.join(caveats)}.")
    if not sentences:  # every section has one model (a report of one model's runs): say so, not an empty heading
        models = ", ".join(dict.fromkeys(model_name(r.model) for r in sweep.runs))
        sentences.append(f"One model per section ({models}): nothing to rank here. "
                         + ("*Across sections* compares a model's sections. " if len(sections) > 1 else "")
                         + f"The final {main_label} and the other metrics are in the tables below.")
    doc.p("\n\n".join(sentences))


ACROSS_METRICS = ("fid", "precision", "recall", "coverage")  # the main extractor's; the Welch columns: first three
LATE = 5  # validations at the end of a run averaged in *Across sections* (an unstable run's final value is luck)


def _across_sections(doc: Doc, sweep: Sweep, columns: list[tuple[str, str, str]], main: str) -> None:
    """Per model found in two or more sections (budgets, or an ablation's options: `compare --budgets small_data
    ~ema` beside `compare --budgets blog,small_data`, in one folder): one row per section, and whether the
    section best on the main metric beats each other one beyond the seed spread (Welch, Holm over the rows)."""
    sections = list(dict.fromkeys(r.section for r in sweep.runs))
    width = {s: len({r.model for r in sweep.runs if r.section == s}) for s in sections}
    sections.sort(key=lambda s: -width[s])  # the comparisons (most models) first, then one-model ablations; stable
    models = {m: [s for s in sections if any(r.model == m and r.section == s and r.status == COMPLETE
                                             for r in sweep.runs)] for m in _by_model(sweep.runs)}
    models = {m: ss for m, ss in models.items() if len(ss) >= 2}
    if not models:
        return
    ext = extractor_of_key(main)
    keyed = {k.removeprefix("val/").split("_")[0]: (label, k, better) for label, k, better in columns
             if extractor_of_key(k) == ext}
    shown = [keyed[name] for name in ACROSS_METRICS if name in keyed]
    main_col = next((c for c in shown if c[1] == main), None)
    if main_col is None:
        return
    tested = [c for c in shown if c[2] in ("lower", "higher")][:3]
    doc.h(2, "Across sections")
    doc.p("The same model under each budget or option set of this folder (final values of complete runs, mean ± sd "
          f"over seeds). The last columns test whether the section with the best final {main_col[0]} differs from "
          "each other section beyond the seed spread: Welch's t-test, Holm-corrected over that model's other "
          "sections, per metric; *p < 0.05* marks a difference the seeds support. *Last validations*: per run, the "
          f"mean of its last {LATE} validations and their sd (how far the run still swings at its end), then mean ± "
          "sd of those over seeds: a run whose metric oscillates can end on a lucky or an unlucky epoch (compare it "
          "between sections with the same `check_val_every_n_epoch`: it spans that many epochs times 5).")
    for model, names in models.items():
        runs = {s: [r for r in sweep.runs if r.model == model and r.section == s and r.status == COMPLETE]
                for s in names}
        values = {s: {k: [r.final(k) for r in rs] for _, k, _ in shown} for s, rs in runs.items()}
        means = {s: summarize(v[main]) for s, v in values.items()}
        best = min((s for s in names if means[s] is not None),
                   key=lambda s: means[s].mean if main_col[2] == "lower" else -means[s].mean)
        p_values = {}
        for label, key, _ in tested:
            others = [s for s in names if s != best]
            raw = []
            for s in others:
                c = pairwise_welch({best: values[best][key], s: values[s][key]})
                raw.append(c[0].p if c and math.isfinite(c[0].p) else math.nan)
            adjusted = stats_holm([p if math.isfinite(p) else 1.0 for p in raw])
            for s, p, q in zip(others, raw, adjusted):
                p_values[(s, key)] = "n/a" if not math.isfinite(p) else f"{q:.2g}{'*' if q < 0.05 else ''}"
        header = ["section", "complete seeds", *[f"final {label}" for label, _, _ in shown],
                  f"last {LATE} validations: mean / swing of {main_col[0]}", "generator steps",
                  "wall time (min)", *[f"vs best: p ({label})" for label, _, _ in tested]]
        rows = []
        for s in names:
            rs = runs[s]
            late = [r.late(main, LATE) for r in rs]
            rows.append([f"**{s}**" if s == best else s, str(len(rs)),
                         *[fmt_summary(summarize(values[s][k]), len(rs))[0] for _, k, _ in shown],
                         f"{fmt_summary(summarize([v[0] if v else None for v in late]), len(rs))[0]} / "
                         f"{fmt_summary(summarize([v[1] if v else None for v in late]), len(rs))[0]}",
                         fmt_summary(summarize([r.final("train/generator_steps") for r in rs]), len(rs))[0],
                         fmt_summary(summarize([_minutes(r) for r in rs]), len(rs))[0],
                         *["best" if s == best else p_values[(s, k)] for _, k, _ in tested]])
        doc.h(3, model_name(model))
        doc.table(header, rows)


def _how_to_read(doc: Doc, seed_counts: list[int]) -> None:
    doc.h(2, "How to read this")
    doc.p("- **Extractors.** `retina_v2`: the in-domain embedding the README's validity table checks (it sees noise, "
          "checkerboards, blur and collapse); `retina`: the grade classifier (IS over the 5 grades; its FID is nearly "
          "blind to noise and checkerboards, kept for comparison); `inception`: Inception-v3 (torch-fidelity's "
          "weights; *not measured* when a run had no access to them). FID, KID, precision/recall/density/coverage "
          "compare generated images with the training split in an embedding; spectral_distance compares power "
          "spectra (texture); C2ST is a classifier's held-out accuracy at telling the final model's samples from "
          "real ones (0.5: indistinguishable).\n"
          "- **final** = the last validation of the run; **best** = the best value of that same metric over all "
          "validations (lowest FID/KID, highest IS). *best* is chosen on the evaluation itself, so it is optimistic.\n"
          "- **mean ± sd** over seeds (sample standard deviation), **95% CI** = Student's t-interval of the mean "
          "(mean ± t(0.975, n-1) · sd / √n); " + _t_note(seed_counts) + " Values are rounded to the sd (2 "
          "significant digits); an interval marked * is cut at the lowest possible value (0 for FID, "
          "memorization, steps and times; 1 for IS).\n"
          "- **memorization** = median distance of generated images to their nearest training image / the same for "
          "unseen test images; well below 1.0 means copying. **copy_fraction**: the share of samples nearer a "
          "training image than 95 % of unseen real images are (0.05 for real images).\n"
          "- **The blog's numbers** are shown beside ours but are not comparable: one run each, presumably "
          "Inception-based, with an unknown protocol (sample count, reference set); `IS = 1.00` for every model "
          "and identical FIDs for two different models suggest an evaluation bug.")


def _t_note(seed_counts: list[int]) -> str:
    """`with 3 seeds it is wide by construction (t = 4.30).` for the seed counts this report has."""
    if not seed_counts:
        return "no model has 2 complete seeds here, so there are no intervals."
    ts = " and ".join(f"{n} seeds t = {float(scipy_t.ppf(0.975, n - 1)):.2f}" for n in seed_counts)
    return f"with few seeds it is wide by construction (with {ts})."


def _runs_section(doc: Doc, sweep: Sweep, table: pd.DataFrame, main: str, label: str) -> None:
    doc.h(2, "Runs")
    name = main.removeprefix("val/")
    header = ["job", "group", "model", "seed", "status", "detail", f"final {label}", f"best {label} @ epoch",
              "generator steps", "critic steps", "wall time (min)"]
    rows = []
    for _, r in table.iterrows():
        final = r.get(f"{name}_final")
        epoch = r.get(f"{name}_best_epoch")
        best = f"{fmt(r[f'{name}_best'])} @ {int(epoch)}" if epoch is not None and pd.notna(epoch) else "missing"
        rows.append([r["job"], r["section"], model_name(r["model"]), r["seed"], r["status"], r["detail"],
                     fmt(final if final is not None and pd.notna(final) else None), best, fmt(r["generator_steps"]),
                     fmt(r["critic_steps"]), fmt(r["wall_time_min"])])
    doc.table(header, rows)
    expected = (main, "val/memorization", "train/generator_steps")
    gaps = [f"`{run.job}`: " + ", ".join(k for k in expected if run.final(k) is None)
            for run in sweep.runs if run.path is not None and any(run.final(k) is None for k in expected)]
    if gaps:
        doc.p("**Missing values** (never logged: shown as *missing*, never as 0, and left out of the statistics):\n"
              + "\n".join(f"- {g}" for g in gaps))
    doc.p("Wall time: the span of the run's TensorBoard event wall times, from its first event (the config, logged "
          "before training) to its last logged value; start-up before the logger existed is not counted.")


def _section(doc: Doc, section: str, runs: list[Run], columns: list[tuple[str, str, str]], main: str,
             out: Path) -> None:
    folder = _slug(section)
    (out / folder).mkdir(exist_ok=True)
    by_model = _by_model(runs)
    doc.h(2, f"Budget: {section}")
    epochs = ", ".join(f"{model_name(m)} {'/'.join(sorted({str(r.max_epochs) for r in rs}))}"
                       for m, rs in by_model.items())
    doc.p(BUDGET_NOTES.get(section, f"Runs of `{section}`.") + f" These runs' `trainer.max_epochs`: {epochs}.")
    complete = {m: [r for r in rs if r.status == COMPLETE] for m, rs in by_model.items()}

    doc.h(3, "Summary")
    ext = extractor_of_key(main)
    headline = [(label, key) for label, key, _ in columns
                if key == main or extractor_of_key(key) in (None, ext) or key.startswith("val/is_")]
    header = ["model", "complete seeds", *[f"final {label}" for label, _ in headline], "C2ST accuracy",
              "generator steps", "wall time (min)"]
    rows = []
    for model, rs in by_model.items():
        ok = complete[model]
        cells = [fmt_summary(summarize([r.final(k) for r in ok]), len(ok))[0]
                 for _, k in headline]  # mean ± sd only: no floor needed
        c2st = fmt_summary(summarize([r.c2st for r in ok]), len(ok))[0]
        steps = fmt_summary(summarize([r.final("train/generator_steps") for r in ok]), len(ok))[0]
        wall = fmt_summary(summarize([_minutes(r) for r in ok]), len(ok))[0]
        rows.append([model_name(model), f"{len(ok)} of {len(rs)}", *cells, c2st, steps, wall])
    doc.table(header, rows)
    doc.p("Arrows: FID, KID and spectral_distance lower is better; precision, recall, coverage and IS higher; density "
          "near 1; C2ST accuracy near 0.5. Memorization and copy_fraction are a copying check, not a ranking: "
          "memorization above 1 (below: closer to the training set than unseen real images) and copy_fraction at or "
          f"under unseen real images' {COPY_QUANTILE:g} pass it.")

    for model, rs in by_model.items():
        ok = complete[model]
        doc.h(3, f"{model_name(model)} ({section})")
        doc.p(f"Seeds {', '.join(r.seed for r in ok) or 'none'} complete"
              + (f"; not in the statistics: {', '.join(f'seed {r.seed} ({r.status})' for r in rs if r not in ok)}"
                 if len(ok) < len(rs) else "") + ".")
        header = ["metric", "final: mean ± sd", "final: 95% CI (t)", "best: mean ± sd", "best: 95% CI (t)",
                  BLOG_HEADER]
        rows = []
        for label, key, better in columns:
            final = fmt_summary(summarize([r.final(key) for r in ok]), len(ok), floor_of(key))
            best = fmt_summary(summarize([b[0] if (b := r.best(key, better == "lower")) else None for r in ok]),
                               len(ok), floor_of(key)) if better in ("lower", "higher") else ("n/a", "n/a")
            short = key.removeprefix("val/").split("_")[0]
            blog = (figures.variant_card(model).get("blog") or {}).get(short) if key.endswith("_inception") else None
            rows.append([label, *final, *best, f"{blog:.2f}" if blog is not None else ""])
        if not any(key.endswith("_inception") for _, key, _ in columns):
            blog = (figures.variant_card(model).get("blog") or {}).get("fid")
            rows.append(["FID (inception)", "not measured", "not measured", "not measured", "not measured",
                         f"{blog:.2f}" if blog is not None else ""])
        rows.append(["C2ST accuracy (final model)", *fmt_summary(summarize([r.c2st for r in ok]), len(ok), 0.0),
                     "", "", ""])
        for label, key in (("generator steps", "train/generator_steps"), ("critic steps", "train/critic_steps")):
            rows.append([label, *fmt_summary(summarize([r.final(key) for r in ok]), len(ok), 0.0), "", "", ""])
        rows.append(["wall time (min)", *fmt_summary(summarize([_minutes(r) for r in ok]), len(ok), 0.0), "", "", ""])
        doc.table(header, rows)
        _samples_figure(doc, section, model, rs, out, folder)

    _pairwise(doc, complete, columns)
    _figures(doc, section, by_model, columns, main, out, folder)


def _pairwise(doc: Doc, complete: dict[str, list[Run]], columns: list[tuple[str, str, str]]) -> None:
    doc.h(3, "Pairwise comparison")
    seeds = sorted({len(rs) for rs in complete.values()})
    doc.p("Which differences between models exceed the seed-to-seed spread: **Welch's t-test** (unequal variances) "
          "on the final values of complete runs, **Holm-corrected** over the model pairs of each metric; "
          f"*yes* = Holm-adjusted p < 0.05. With {'-'.join(map(str, seeds[::max(1, len(seeds) - 1)]))} seeds per "
          "model the test has **low power**: only large, consistent differences reach significance, and *no* means "
          "*not shown*, not *equal*. Pairs with fewer than 2 seeds on a side are not tested.")
    rows = []
    for label, key in [(label, key) for label, key, _ in columns]:
        for c in pairwise_welch({m: [r.final(key) for r in rs] for m, rs in complete.items()}):
            rows.append([label, f"{model_name(c.a)} − {model_name(c.b)}", fmt(c.difference),
                         f"{c.t:.2f} ({c.df:.1f})" if math.isfinite(c.t) else "n/a", f"{c.p:.3g}",
                         f"{c.p_holm:.3g}", "yes" if c.p_holm < 0.05 else "no"])
    if rows:
        doc.table(["metric (final)", "pair", "difference of means", "Welch t (df)", "p", "p (Holm)",
                   "exceeds seed spread?"], rows)
    else:
        doc.p("*No pair has 2 or more complete seeds on both sides: nothing to test.*")


def _figures(doc: Doc, section: str, by_model: dict[str, list[Run]], columns: list[tuple[str, str, str]], main: str,
             out: Path, folder: str) -> None:
    doc.h(3, "Figures")
    band = "line: mean over seeds; band: min to max over seeds (all runs with a value at that epoch)"
    # Critic losses are comparable within a loss family only (their card's `family`): one figure per family.
    families: dict[str, dict[str, list[Run]]] = {}
    for model, rs in by_model.items():
        families.setdefault(figures.variant_card(model)["family"], {})[model] = rs
    losses = [(f"c-loss-{_slug(family)}.png", models, "train/critic_loss_epoch",
               f"Critic loss, {family} ({', '.join(model_name(m) for m in models)})", "critic loss")
              for family, models in families.items()]
    losses.append(("g-loss.png", by_model, "train/generator_loss_epoch", "Generator loss", "generator loss"))
    for name, models, key, title, ylabel in losses:
        if figures.curves(models, key, f"{title}, {section}", ylabel, out / folder / name):
            doc.figure(f"{folder}/{name}", f"{title} per epoch (`{key}`); {band}.")
    ext = extractor_of_key(main)
    for label, key, _ in columns:
        if extractor_of_key(key) not in (None, ext) and not key.startswith(("val/fid_", "val/is_")):
            continue  # every metric of the main embedding and the pixel ones; FID and IS of the other extractors
        name = f"{_slug(key.removeprefix('val/'))}.png"
        if figures.curves(by_model, key, f"{label}, {section}", label, out / folder / name):
            doc.figure(f"{folder}/{name}", f"{label} at each validation (`{key}`); {band}.")

    for model, runs in by_model.items():
        name = f"memorization-{model}.png"
        if figures.per_seed(runs, "val/memorization", f"Memorization, {model_name(model)} ({section})",
                            "memorization ratio", out / folder / name, reference=1.0):
            doc.figure(f"{folder}/{name}", f"{model_name(model)}: `val/memorization` per seed; dashed: 1.0 "
                       "(samples as far from the training set as unseen real images); below it: closer (copying).")


def _samples_figure(doc: Doc, section: str, model: str, runs: list[Run], out: Path, folder: str) -> None:
    """16 samples from each seed's best checkpoint beside real images, right under the model's numbers."""
    panels, notes, real = [], [], None
    for run in runs:
        if run.best_checkpoint is None:
            notes.append(f"seed {run.seed}: no best checkpoint")
            continue
        try:
            epoch = re.search(r"(\d+)", run.best_checkpoint.stem)
            panels.append((f"seed {run.seed}, best (epoch {int(epoch.group(1)) if epoch else '?'})",
                           figures.checkpoint_samples(run.best_checkpoint)))
            if real is None:
                real = figures.real_samples(run.best_checkpoint)
        except Exception as error:  # noqa: BLE001 - one unreadable checkpoint must not lose the report
            notes.append(f"seed {run.seed}: {type(error).__name__}: {error}")
    if panels:
        name = f"samples-{model}.png"
        figures.sample_grid(panels + ([("real (train split)", real)] if real is not None else []),
                            f"{model_name(model)} ({section})", out / folder / name)
        doc.figure(f"{folder}/{name}", f"{model_name(model)}: 16 samples from each seed's best checkpoint "
                   "(best main metric), the same fixed noise for every model and seed; right: real images.")
    if notes:
        doc.p(f"{model_name(model)} samples: " + "; ".join(notes) + ".")


UTILITY_FILE = "utility-last.json"  # what `python -m retina_gans.utility ckpt_path=<run>/checkpoints/last.ckpt` writes


def _utility_section(doc: Doc, sweep: Sweep) -> None:
    """Downstream utility of conditional runs (`retina_gans.utility`, run by `compare --utility`): per model and
    setting, the mean over runs of each run's classifier-seed means, and its sd over runs."""
    conditional = [r for r in sweep.runs if r.usable and (r.config.get("model") or {}).get("conditional")]
    if not conditional:
        return
    doc.h(2, "Downstream utility (conditional runs)")
    found: dict[str, list[dict]] = {}
    missing = []
    for run in conditional:
        path = run.path / "checkpoints" / UTILITY_FILE
        if path.is_file():
            found.setdefault(run.model, []).append(json.loads(path.read_text())["settings"])
        else:
            missing.append(f"`python -m retina_gans.utility {shlex.quote(override('ckpt_path', Path(run.path) / 'checkpoints' / 'last.ckpt'))}`")
    rows = []
    for model, results in found.items():
        for setting in results[0]:
            auc = [r[setting]["auc"]["mean"] for r in results]
            ratio = [r[setting]["auc"]["mean"] / r["real"]["auc"]["mean"] for r in results]
            accuracy = [r[setting]["accuracy"]["mean"] for r in results]
            spread = sum(r[setting]["auc"]["sd"] for r in results) / len(results)
            cells = [fmt_summary(summarize(values), len(results))[0] for values in (accuracy, auc, ratio)]
            rows.append([model_name(model), setting, str(len(results)), *cells[:2], f"{spread:.3f}", cells[2]])
    if rows:
        doc.table(["model", "setting", "runs", "test accuracy", "test AUC", "classifier-seed sd of AUC",
                   "AUC / real-only"], rows)
        doc.p("A fresh grade classifier per setting and classifier seed, selected on the real val split, scored on "
              "the real test split (MedMNIST's accuracy and macro one-vs-rest AUC). Per run: the mean over classifier "
              "seeds; here mean ± sd over the runs (GAN seeds). Targets: `synthetic` at least 0.9x the real-only AUC; "
              "`real+balance` or `real+equal` above real-only by more than the classifier-seed sd.")
    if missing:
        doc.p("**Not measured** (no utility JSON beside the checkpoint):\n" + "\n".join(f"- {m}" for m in missing))


def _provenance(doc: Doc, sweep: Sweep) -> None:
    doc.h(2, "How this report was made")
    lines = [f"- Report: `python -m retina_gans.report {sweep.path}`, {datetime.now().isoformat(timespec='seconds')}",
             f"- Project commit now: `{git_commit()}`"]
    if sweep.launch:
        launch_machine = sweep.launch.get("machine", {})
        lines.append(f"- Launched by `retina_gans.compare` at {sweep.launch.get('started')}:")
        lines += [f"  - `python {' '.join(command[1:])}`" for command in sweep.launch.get("commands", [])]
        lines += [
                  f"- Project commit at launch: `{sweep.launch.get('git_commit')}`",
                  "- Training machine: " + ", ".join(f"{k} {v}" for k, v in launch_machine.items())]
    lines.append("- Report machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()))
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    lines.append("- Library versions (report machine): " + ", ".join(versions))
    lines.append("- Numbers: each run's `metrics.csv` (Lightning's CSVLogger) read with pandas; per-run values "
                 "in `runs.csv` beside this report.")
    doc.p("\n".join(lines))
    doc.h(3, "Configuration of each run")
    doc.p("Each run's command-line overrides, and (folded) its composed Hydra config `.hydra/config.yaml`.")
    doc.table(["job", "overrides"], [[r.job, " ".join(f"`{o}`" for o in r.overrides) or "none"]
                                     for r in sweep.runs if r.path is not None])
    for run in sweep.runs:
        if run.config_text:
            doc.details(f"{run.job}: .hydra/config.yaml", run.config_text)
