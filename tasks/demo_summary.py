"""The demo's one-page summary: summary.md with its charts beside it, from the results dict that
`vlbert demo` prints as its last line.

    demo_out/summary.md           the key numbers in small tables, the charts embedded
    demo_out/pretrain_metrics.png held-out pretraining metrics, untrained vs pretrained
    demo_out/vqa_accuracy.png     VQA accuracy, pretrained vs from scratch on 10% of the questions
    demo_out/retrieval_recall.png recall@1/5/10 both ways, before vs after fine-tuning, chance marked
    (summary.md also tables pretrained against from scratch at equal fine-tuning steps, with the gains)
    demo_out/caption_scores.png   caption CIDEr / BLEU-4 / ROUGE-L, before and after fine-tuning, pretrained vs scratch
    demo_out/pretrain_curves.png  the pretraining run's curves (`vlbert plot`), when it has logs
"""
from __future__ import annotations

from pathlib import Path

from vlbert.training.plots import PlotError, plot_run

BEFORE, AFTER = "#a0a0a0", "#1f77b4"  # baseline grey, the pretrained / fine-tuned model blue
PRETRAIN_NAMES = {"mlm_acc": "MLM accuracy", "itm_acc": "ITM accuracy", "mrc_kl_acc": "MRC-KL accuracy",
                  "mrfr_loss": "MRFR loss"}
DIRECTIONS = {"i2t": "image → text", "t2i": "text → image"}
RECALL_KS = (1, 5, 10)
CAPTION_NAMES = {"cider": "CIDEr", "bleu4": "BLEU-4", "rouge_l": "ROUGE-L"}


def write_summary(results: dict, out_dir: str | Path) -> Path:
    """Write `out_dir`/summary.md and its PNGs from the demo's results; returns the markdown's path.
    Sections whose results are missing are left out."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# vlbert demo: summary", "", _setup_line(results), ""]
    if "pretrain" in results:
        lines += _pretrain_section(results["pretrain"], out_dir)
    if "vqa" in results:
        lines += _vqa_section(results["vqa"], out_dir)
    if "retrieval" in results:
        lines += _retrieval_section(results["retrieval"], out_dir)
    if "equal_budget" in results:
        lines += _equal_budget_section(results["equal_budget"])
    if "caption" in results:
        lines += _caption_section(results["caption"], out_dir)
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _setup_line(results: dict) -> str:
    parts = [f"{results.get('num_images', '?')} synthetic images, seed {results.get('seed', '?')}"]
    if "features" in results:
        parts.append(f"features: {results['features'].get('source', '?')}")
    if results.get("extraction", {}).get("random_detector"):
        parts.append("the detector had random weights (none cached), so its features checked the pipeline only")
    if "seconds" in results:
        parts.append(f"{results['seconds']:g} s in all")
    return "; ".join(parts) + "."


def _number(value) -> str:
    return "–" if value is None else f"{value:g}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join([str(row[0])] + [_number(v) for v in row[1:]]) + " |" for row in rows]
    return lines + [""]


def _pretrain_section(pretrain: dict, out_dir: Path) -> list[str]:
    untrained, pretrained = pretrain.get("untrained", {}), pretrain.get("pretrained", {})
    names = [n for n in PRETRAIN_NAMES if n in untrained or n in pretrained]
    names += [n for n in {**untrained, **pretrained} if n not in names]
    lines = ["## Pretraining: held-out captions", ""]
    lines += _table(["metric", "untrained", "pretrained"],
                    [[PRETRAIN_NAMES.get(n, n), untrained.get(n), pretrained.get(n)] for n in names])
    if names:
        _pretrain_chart(names, untrained, pretrained, out_dir / "pretrain_metrics.png")
        lines += ["![held-out pretraining metrics, untrained vs pretrained](pretrain_metrics.png)", ""]
    run_dir = Path(pretrain["export"]).parent if pretrain.get("export") else out_dir / "pretrain"
    try:
        plot_run(run_dir, out_dir / "pretrain_curves.png")
        lines += ["Pretraining curves (`vlbert plot " + str(run_dir) + "`):", "",
                  "![pretraining loss and metric curves](pretrain_curves.png)", ""]
    except PlotError:
        pass  # a run without logs: the table and the bars say what there is
    return lines


def _vqa_section(vqa: dict, out_dir: Path) -> list[str]:
    pretrained = vqa.get("pretrained_all_questions", {})
    scratch = vqa.get("untrained_10pct_questions", {})
    keys = ["vqa_acc"] + sorted({k for k in {**pretrained, **scratch} if k.startswith("vqa_acc_")})
    labels = ["overall"] + [k.removeprefix("vqa_acc_").replace("_", "/") for k in keys[1:]]
    lines = ["## VQA: test split, VQA accuracy (%)", ""]
    lines += _table(["answers", "pretrained, all questions", "from scratch, 10% of questions"],
                    [[label, pretrained.get(k), scratch.get(k)] for label, k in zip(labels, keys)])
    figure, ax = _figure(1, (7.0, 3.8))
    _bars(ax[0], labels, {"from scratch, 10% of questions": [scratch.get(k) for k in keys],
                          "pretrained, all questions": [pretrained.get(k) for k in keys]})
    ax[0].set_ylim(0, 105)
    ax[0].set_ylabel("VQA accuracy (%)")
    ax[0].set_title("VQA accuracy on the test questions")
    _save(figure, out_dir / "vqa_accuracy.png")
    return lines + ["![VQA accuracy, pretrained vs from scratch](vqa_accuracy.png)", ""]


def _retrieval_section(retrieval: dict, out_dir: Path) -> list[str]:
    before, after = retrieval.get("before_finetuning", {}), retrieval.get("finetuned", {})
    chance = retrieval.get("chance", {})
    sizes = f"{retrieval['test_images']} images, {retrieval['test_captions']} captions; " \
        if "test_images" in retrieval and "test_captions" in retrieval else ""
    lines = [f"## Retrieval: test split ({sizes}recall %)", ""]
    rows = [[f"{DIRECTIONS[d]} R@{k}", before.get(f"{d}_r{k}"), after.get(f"{d}_r{k}"), chance.get(f"{d}_r{k}")]
            for d in DIRECTIONS for k in RECALL_KS]
    if "r_mean" in before or "r_mean" in after:
        rows.append(["mean recall", before.get("r_mean"), after.get("r_mean"), None])
    lines += _table(["recall", "before fine-tuning", "fine-tuned", "chance"], rows)
    figure, axes = _figure(2, (11.0, 3.8))
    labels = [f"R@{k}" for k in RECALL_KS]
    for ax, (direction, title) in zip(axes, DIRECTIONS.items()):
        keys = [f"{direction}_r{k}" for k in RECALL_KS]
        _bars(ax, labels, {"before fine-tuning": [before.get(k) for k in keys],
                           "fine-tuned": [after.get(k) for k in keys]},
              chance=[chance.get(k) for k in keys])
        ax.set_ylim(0, 112)
        ax.set_ylabel("recall (%)")
        ax.set_title(f"Retrieval, {title}")
    _save(figure, out_dir / "retrieval_recall.png")
    return lines + ["![retrieval recall before and after fine-tuning, chance dashed](retrieval_recall.png)", ""]


EQUAL_BUDGET_NAMES = {"vqa_10pct": "VQA accuracy, 10% of the questions", "vqa_all": "VQA accuracy, all questions",
                      "retrieval_i2t_r1": "retrieval image → text R@1", "retrieval_t2i_r1": "retrieval text → image R@1"}


def _equal_budget_section(comparison: dict) -> list[str]:
    """Pretrained against from scratch, the same fine-tuning steps and seed: what pretraining buys."""
    lines = ["## Pretraining against from scratch: equal fine-tuning steps and seed (test split, %)", ""]
    rows = [[EQUAL_BUDGET_NAMES.get(k, k), p.get("from_scratch"), p.get("pretrained"), p.get("gain")]
            for k, p in comparison.items()]
    return lines + _table(["metric", "from scratch", "pretrained", "gain (points)"], rows)


def _caption_section(caption: dict, out_dir: Path) -> list[str]:
    pretrained, scratch = caption.get("pretrained", {}), caption.get("from_scratch", {})
    names = [n for n in CAPTION_NAMES if n in {**pretrained.get("finetuned", {}), **scratch.get("finetuned", {})}]
    images = pretrained.get("test_images") or scratch.get("test_images")
    objective = pretrained.get("objective") or scratch.get("objective")
    lines = [f"## Captioning: test split ({f'{images} images, ' if images else ''}COCO metrics x 100)", ""]
    if objective:
        lines += [f"Objective `{objective}`; both models fine-tuned for the same steps.", ""]
    columns = {"pretrained, before": pretrained.get("before_finetuning", {}), "pretrained, fine-tuned": pretrained.get("finetuned", {}),
               "from scratch, before": scratch.get("before_finetuning", {}), "from scratch, fine-tuned": scratch.get("finetuned", {})}
    lines += _table(["metric", *columns], [[CAPTION_NAMES[n], *(c.get(n) for c in columns.values())] for n in names])
    samples = pretrained.get("samples") or []
    if samples:
        lines += ["Test captions of the fine-tuned pretrained model (first reference in brackets):", ""]
        lines += [f"- {s['caption']} ({s['reference']})" for s in samples] + [""]
    if names:
        figure, axes = _figure(2, (10.0, 3.8))
        for ax, (title, result) in zip(axes, (("pretrained", pretrained), ("from scratch", scratch))):
            _bars(ax, [CAPTION_NAMES[n] for n in names],
                  {"before fine-tuning": [result.get("before_finetuning", {}).get(n) for n in names],
                   "fine-tuned": [result.get("finetuned", {}).get(n) for n in names]})
            highest = max([v for r in (pretrained, scratch) for part in ("before_finetuning", "finetuned")
                           for v in r.get(part, {}).values() if v is not None] + [1])
            ax.set_ylim(0, highest * 1.15)
            ax.set_ylabel("score x 100")
            ax.set_title(f"Captioning, {title}")
        _save(figure, out_dir / "caption_scores.png")
        lines += ["![caption metrics before and after fine-tuning, pretrained vs from scratch](caption_scores.png)", ""]
    return lines


def _pretrain_chart(names: list[str], untrained: dict, pretrained: dict, out: Path) -> None:
    # accuracies (higher is better, 0..1) and losses (lower is better) on their own axes
    panels = [(title, [n for n in names if ("loss" in n) == is_loss]) for title, is_loss in
              (("accuracy (higher is better)", False), ("loss (lower is better)", True))]
    panels = [(title, members) for title, members in panels if members]
    widths = [max(len(members), 1.5) for _, members in panels]
    figure, axes = _figure(len(panels), (3.2 + 1.6 * len(names), 3.8), width_ratios=widths)
    for ax, (title, members) in zip(axes, panels):
        _bars(ax, [PRETRAIN_NAMES.get(n, n) for n in members],
              {"untrained": [untrained.get(n) for n in members], "pretrained": [pretrained.get(n) for n in members]})
        ax.set_title(f"Held-out {title}")
        highest = max([v for n in members for v in (untrained.get(n), pretrained.get(n)) if v is not None] + [0])
        ax.set_ylim(0, 1.1 if "accuracy" in title else highest * 1.25 or 1)
    _save(figure, out)


def _figure(panels: int, size: tuple[float, float], width_ratios: list[float] | None = None):
    from matplotlib.figure import Figure  # the Agg canvas without pyplot: no window, no global state

    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False, width_ratios=width_ratios)[0]
    return figure, axes


def _bars(ax, groups: list[str], bars: dict[str, list], chance: list | None = None) -> None:
    """Grouped bars, one colour per entry of `bars` (baseline first), values written on them;
    `chance` (one level per group) a dashed black line across each group."""
    width = 0.8 / len(bars)
    for i, ((label, values), colour) in enumerate(zip(bars.items(), (BEFORE, AFTER, "#ff7f0e"))):
        positions = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        heights = [0.0 if v is None else v for v in values]
        container = ax.bar(positions, heights, width * 0.95, label=label, color=colour)
        # on a white ground, so that a chance line through a label leaves it readable
        ax.bar_label(container, labels=[_number(v) for v in values], fontsize=8, padding=2,
                     zorder=4,
                     bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none"})
    levels = [(g, level) for g, level in enumerate(chance or []) if level is not None]
    for g, level in levels:
        ax.hlines(level, g - 0.45, g + 0.45, colors="black", linestyles="--", linewidth=1.3, zorder=3,
                  label="chance" if g == levels[0][0] else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _save(figure, out: Path) -> None:
    # one legend under the panels, where it covers no bar
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9, frameon=False)
    figure.savefig(out, dpi=110)
