//! `superlora plot results.csv`: test accuracy (mean ± std over seeds) against trainable adapter
//! parameters on a log axis, one series per family, head-only, full fine-tuning and a decoder's
//! base model as horizontal references; PNG and SVG (plotters), plus a Markdown file with every
//! point, the Pareto front and the paper's two claims read off the curve. A causal-lm sweep's
//! results (perplexity columns) are drawn the same way with test perplexity, where lower is
//! better: "beats" and "reaches" then mean a lower perplexity.
//!
//! A family's curve is its own Pareto front (its configs that no config of the same family beats
//! with at most as many parameters), drawn as a line through filled dots; its other configs (e.g.
//! a rank past the family's best, or a second grouping at the same count) are hollow dots. The
//! accuracy axis spans the curves and references; a hollow dot below it sits on the bottom edge
//! (its value is in the table).
//!
//! 1. parameters SuperLoRA needs to match LoRA r = 1: for each non-LoRA family, the smallest
//!    parameter count at which its curve (piecewise linear in log parameters) reaches the accuracy
//!    of the smallest LoRA point; the ratio to that LoRA point's count.
//!    With several LoRA seeds the ratio is also read at LoRA's mean ∓ one standard deviation,
//!    also for a family whose mean stays below LoRA's (where it enters LoRA's seed spread).
//! 2. the best config with at most 100 adapter parameters against head-only (decoder tasks: the
//!    base model), with the standard error of the difference of the two means where both have
//!    several seeds.
//!
//! The score read is `test_acc_at_best` (test accuracy at the best-validation step), or
//! `test_ppl_at_best`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::commands::sweep::{COLUMNS, Metric, PPL_COLUMNS};
use crate::settings::InputError;

/// `superlora plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A results.csv written by `sweep`.
    #[arg(value_name = "RESULTS.csv")]
    pub results: PathBuf,
    /// Output folder (default: the CSV's folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// File name stem of the outputs (<name>.png, .svg, .md) [default: accuracy_vs_params, or
    /// perplexity_vs_params for causal-lm results].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Plot title.
    #[arg(long)]
    pub title: Option<String>,
    /// Replace existing outputs.
    #[arg(long)]
    pub force: bool,
}

/// Families drawn as horizontal reference lines.
const REFERENCES: [&str; 3] = ["head-only", "full-ft", crate::commands::sweep::BASE_CELL];

/// One config: its seeds aggregated.
#[derive(Clone, Debug)]
pub struct Point {
    /// Plot series.
    pub family: String,
    /// Cell name.
    pub cell: String,
    /// Adapter parameters.
    pub params: f64,
    /// Mean test score (accuracy or perplexity) at the best-validation step.
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    pub std: f64,
    /// Seeds.
    pub n: usize,
}

impl Point {
    /// "mean ± std", or "mean (1 seed)" where there is no spread to show.
    pub fn accuracy(&self) -> String {
        if self.n > 1 { format!("{:.4} ± {:.4}", self.mean, self.std) } else { format!("{:.4} (1 seed)", self.mean) }
    }
}

/// Reads results.csv (accuracy or perplexity columns) and aggregates seeds per cell.
pub fn read_points(path: &Path) -> Result<(Metric, Vec<Point>)> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    let Some(metric) = Metric::from_header(&headers.iter().map(String::as_str).collect::<Vec<_>>()) else {
        bail!(InputError(format!(
            "{}: columns {headers:?}, expected those of `sweep` ({COLUMNS:?}, or for causal-lm {PPL_COLUMNS:?})",
            path.display()
        )));
    };
    let cols = metric.columns();
    let mut cells: BTreeMap<String, (String, f64, Vec<f64>)> = BTreeMap::new();
    // (cell, seed) → row: a run counted twice would fake a second seed with no spread.
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, row) in r.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let num = |col: usize| -> Result<f64> {
            row[col].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                InputError(format!(
                    "{}: row {}, `{}` = `{}` is not a number",
                    path.display(),
                    i + 2,
                    cols[col],
                    &row[col]
                ))
                .into()
            })
        };
        let (params, acc) = (num(4)?, num(8)?);
        let valid = match metric {
            Metric::Accuracy => (0.0..=1.0).contains(&acc),
            Metric::Perplexity => acc >= 1.0,
        };
        if params < 0.0 || !valid {
            bail!(InputError(format!(
                "{}: row {}: adapter_params = {params} and {} = {acc}; expected a count ≥ 0 and {}",
                path.display(),
                i + 2,
                cols[8],
                if metric == Metric::Accuracy { "an accuracy in [0, 1]" } else { "a perplexity ≥ 1" }
            )));
        }
        if let Some(first) = seen.insert((row[0].to_string(), row[3].to_string()), i + 2) {
            bail!(InputError(format!(
                "{}: rows {first} and {} are both config `{}` seed {}; a run may be counted once: delete one",
                path.display(),
                i + 2,
                &row[0],
                &row[3]
            )));
        }
        let e = cells.entry(row[0].to_string()).or_insert_with(|| (row[1].to_string(), params, Vec::new()));
        if e.0 != row[1] || e.1 != params {
            bail!(InputError(format!(
                "{}: row {}: config `{}` has family `{}` and {params} adapter parameters here, `{}` and {} in an \
                 earlier row; rows of one config must agree",
                path.display(),
                i + 2,
                &row[0],
                &row[1],
                e.0,
                e.1
            )));
        }
        e.2.push(acc);
    }
    if cells.is_empty() {
        bail!(InputError(format!("{} has no rows", path.display())));
    }
    let points = cells
        .into_iter()
        .map(|(cell, (family, params, accs))| {
            let n = accs.len();
            let mean = accs.iter().sum::<f64>() / n as f64;
            let std = if n > 1 {
                (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            } else {
                0.0
            };
            Point { family, cell, params, mean, std, n }
        })
        .collect();
    Ok((metric, points))
}

/// Indices of the Pareto-optimal points: no other point has at most as many parameters and a
/// better mean score (or an equal score with fewer parameters).
pub fn pareto(points: &[Point], metric: Metric) -> Vec<usize> {
    let key = |i: usize| metric.key(points[i].mean);
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&a, &b| points[a].params.total_cmp(&points[b].params).then(key(b).total_cmp(&key(a))));
    let mut best = f64::NEG_INFINITY;
    let mut front = Vec::new();
    for i in idx {
        if key(i) > best {
            best = key(i);
            front.push(i);
        }
    }
    front
}

/// The smallest parameter count at which a curve (sorted by parameters, linear in log params)
/// reaches `target` (scores on a higher-is-better scale: [`Metric::key`]); None if it never does.
pub fn params_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 >= target {
        return Some(first.0);
    }
    for w in curve.windows(2) {
        let ((p0, a0), (p1, a1)) = (w[0], w[1]);
        if a0 < target && a1 >= target {
            let t = (target - a0) / (a1 - a0);
            return Some((p0.max(1.0).ln() + t * (p1.max(1.0).ln() - p0.max(1.0).ln())).exp());
        }
    }
    None
}

fn series(points: &[Point]) -> BTreeMap<String, Vec<&Point>> {
    let mut m: BTreeMap<String, Vec<&Point>> = BTreeMap::new();
    for p in points.iter().filter(|p| !REFERENCES.contains(&p.family.as_str())) {
        m.entry(p.family.clone()).or_default().push(p);
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.params.total_cmp(&b.params));
    }
    m
}

/// A family's curve: its own Pareto front, by increasing parameters.
pub fn family_curve<'a>(pts: &[&'a Point], metric: Metric) -> Vec<&'a Point> {
    let owned: Vec<Point> = pts.iter().map(|&p| p.clone()).collect();
    pareto(&owned, metric).into_iter().map(|i| pts[i]).collect()
}

/// A family's curve as (parameters, score on the higher-is-better scale).
fn keyed_curve(pts: &[&Point], metric: Metric) -> Vec<(f64, f64)> {
    family_curve(pts, metric).iter().map(|p| (p.params, metric.key(p.mean))).collect()
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, points: &[Point], metric: Metric, title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let plotted: Vec<&Point> = points.iter().filter(|p| p.params > 0.0).collect();
    let (mut xmin, mut xmax) =
        plotted.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| (lo.min(p.params), hi.max(p.params)));
    if !xmin.is_finite() {
        (xmin, xmax) = (1.0, 10.0);
    }
    let (xmin, xmax) = (xmin / 2.0, xmax * 2.0);
    // The score axis spans the curves and the references; a config its own family beats (a
    // hollow dot) far worse than them would squash the curves, so it is drawn on the edge instead.
    let on_curves: Vec<&Point> = series(points)
        .values()
        .flat_map(|pts| family_curve(pts, metric))
        .chain(points.iter().filter(|p| REFERENCES.contains(&p.family.as_str())))
        .collect();
    let (mut ymin, mut ymax) = on_curves
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.mean - p.std), hi.max(p.mean + p.std)));
    let pad = ((ymax - ymin) * 0.08).max(0.005);
    ymin = (ymin - pad).max(0.0);
    ymax += pad;
    if metric == Metric::Accuracy {
        ymax = ymax.min(1.0);
    }
    // Where a config off its family's curve is drawn when it lies outside the axis.
    let clamp = |v: f64| v.clamp(ymin, ymax);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), ymin..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("trainable adapter parameters (log scale)")
        .y_desc(format!("{} (mean ± std over seeds)", metric.name()))
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .x_label_formatter(&|x| {
            if *x >= 1e6 {
                format!("{:.0}M", x / 1e6)
            } else if *x >= 1e3 {
                format!("{:.0}k", x / 1e3)
            } else {
                format!("{x:.0}")
            }
        })
        .draw()
        .map_err(err)?;
    for (i, (family, pts)) in series(points).into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let label = format!("{family} ({} pts)", pts.len());
        let curve = family_curve(&pts, metric);
        chart
            .draw_series(LineSeries::new(curve.iter().map(|p| (p.params, p.mean)), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(curve.iter().map(|p| Circle::new((p.params, p.mean), 4, color.filled()))).map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| !curve.iter().any(|c| std::ptr::eq(*c, **p)))
                    .map(|p| Circle::new((p.params, clamp(p.mean)), 5, color.stroke_width(2))),
            )
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| p.std > 0.0 && (ymin..=ymax).contains(&p.mean))
                    .map(|p| ErrorBar::new_vertical(p.params, p.mean - p.std, p.mean, p.mean + p.std, color, 6)),
            )
            .map_err(err)?;
    }
    for (j, family) in REFERENCES.iter().enumerate() {
        let refs: Vec<&Point> = points.iter().filter(|p| p.family == *family).collect();
        for p in refs {
            let color = if j == 0 { RGBColor(90, 90, 90) } else { RGBColor(0, 0, 0) };
            let label = if p.params > 0.0 {
                format!("{family} ({} params): {:.3}", count(p.params), p.mean)
            } else {
                format!("{family}: {:.3}", p.mean)
            };
            chart
                .draw_series(DashedLineSeries::new([(xmin, p.mean), (xmax, p.mean)], 8, 5, color.stroke_width(2)))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        // Accuracy rises with parameters and perplexity falls: these corners stay empty.
        .position(if metric == Metric::Accuracy {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        })
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn register_font() -> Result<()> {
    let path = superlora_data::cache_dir()?.join("assets").join("font").join("DejaVuSans.ttf");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the plot font {}: run `scripts/setup-assets.sh font`", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))?;
    Ok(())
}

/// A parameter count (whole, or interpolated and rounded) with thousands separators.
fn count(params: f64) -> String {
    super::plan::thousands(params.round().max(0.0) as usize)
}

/// Markdown: all points, the Pareto front, the two claims.
pub fn report(points: &[Point], metric: Metric) -> String {
    let mut s = String::new();
    let front = pareto(points, metric);
    let short = if metric == Metric::Accuracy { "test acc" } else { "test ppl" };
    s.push_str(&format!(
        "| family | config | adapter params | {short} (mean ± std) | seeds | Pareto |\n|---|---|---:|---:|---:|:---:|\n"
    ));
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[a].family.cmp(&points[b].family).then(points[a].params.total_cmp(&points[b].params)));
    for i in order {
        let p = &points[i];
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            p.family,
            p.cell,
            count(p.params),
            p.accuracy(),
            p.n,
            if front.contains(&i) { "★" } else { "" }
        ));
    }
    let better = if metric == Metric::Accuracy { "higher mean accuracy" } else { "lower mean perplexity" };
    s.push_str(&format!("\n**Pareto front** (no other config has at most as many parameters and a {better}):\n\n"));
    for &i in &front {
        let p = &points[i];
        s.push_str(&format!("- {} params: {} — {}\n", count(p.params), p.cell, p.accuracy()));
    }
    s.push_str("\n**Claims, read off the curve**\n\n");
    let lora = points.iter().filter(|p| p.family == "lora").min_by(|a, b| a.params.total_cmp(&b.params));
    let key = |v: f64| metric.key(v);
    match lora {
        None => s.push_str("- No `lora` family in the results: claim 1 cannot be read.\n"),
        Some(l) => {
            s.push_str(&format!(
                "- 1. Reference: the smallest LoRA ({}, {} params) reaches {:.4}{}.\n",
                l.cell,
                count(l.params),
                l.mean,
                if metric == Metric::Perplexity { " (perplexity: reaching means as low or lower)" } else { "" }
            ));
            for (family, pts) in series(points) {
                if family == "lora" {
                    continue;
                }
                let curve = keyed_curve(&pts, metric);
                match params_to_reach(&curve, key(l.mean)) {
                    // Reached at the first point: the crossing may lie below it, so the ratio is a bound.
                    Some(p) if p <= curve[0].0 => s.push_str(&format!(
                        "  - {family}: already at its smallest point ({} params, {:.4}): {}{}\n",
                        count(curve[0].0),
                        key(curve[0].1),
                        ratio(l.params, p, curve[0].0),
                        spread(l, &curve, metric)
                    )),
                    Some(p) => s.push_str(&format!(
                        "  - {family}: reaches it at ≈ {} params (interpolated): {}{}\n",
                        count(p),
                        ratio(l.params, p, curve[0].0),
                        spread(l, &curve, metric)
                    )),
                    // Its mean stays behind LoRA's, but may lie inside LoRA's seed spread: say where.
                    None => {
                        let best = pts.iter().max_by(|a, b| key(a.mean).total_cmp(&key(b.mean)));
                        s.push_str(&format!(
                            "  - {family}: does not reach it (best {:.4} at {} params){}\n",
                            best.map_or(f64::NAN, |p| p.mean),
                            count(best.map_or(0.0, |p| p.params)),
                            spread(l, &curve, metric)
                        ))
                    }
                }
            }
        }
    }
    let reference = ["head-only", crate::commands::sweep::BASE_CELL]
        .into_iter()
        .find_map(|f| points.iter().find(|p| p.family == f));
    let tiny = points
        .iter()
        .filter(|p| p.params > 0.0 && p.params <= 100.0 && !REFERENCES.contains(&p.family.as_str()))
        .max_by(|a, b| key(a.mean).total_cmp(&key(b.mean)));
    let (scale, unit) = if metric == Metric::Accuracy { (100.0, "points") } else { (1.0, "perplexity") };
    match (tiny, reference) {
        (Some(t), Some(h)) => s.push_str(&format!(
            "- 2. Best config with ≤ 100 adapter parameters: {} ({} params) {} vs {} {}: {:+.2} {unit}{}.\n",
            t.cell,
            count(t.params),
            t.accuracy(),
            h.family,
            h.accuracy(),
            scale * (t.mean - h.mean),
            difference_error(t, h, scale, unit)
        )),
        (None, _) => s.push_str("- 2. No config with ≤ 100 adapter parameters in the results.\n"),
        (_, None) => s.push_str("- 2. No head-only (or base model) run in the results to compare with.\n"),
    }
    s
}

/// How the difference of two means compares with its standard error (Welch: √(s₁²/n₁ + s₂²/n₂)),
/// in `unit`s of `scale` x the score.
fn difference_error(t: &Point, h: &Point, scale: f64, unit: &str) -> String {
    let se = (t.std.powi(2) / t.n as f64 + h.std.powi(2) / h.n as f64).sqrt();
    if t.n > 1 && h.n > 1 && se > 0.0 {
        format!(
            " (standard error of the difference {:.2} {unit}: {:.1} standard errors)",
            scale * se,
            (t.mean - h.mean) / se
        )
    } else if t.n > 1 && h.n > 1 {
        " (no spread over the seeds on either side)".to_string()
    } else {
        " (one seed on a side: no spread to compare with)".to_string()
    }
}

/// "5.2x fewer parameters" for a crossing at `p` against LoRA's `lora` parameters; a bound ("≥",
/// "≤") when the crossing is the curve's first point (`first`), below which nothing ran.
fn ratio(lora: f64, p: f64, first: f64) -> String {
    let bound = p <= first;
    if p <= lora {
        format!("{}{:.1}x fewer parameters", if bound { "≥ " } else { "" }, lora / p)
    } else if bound {
        format!("≤ {:.1}x more parameters (no smaller config of this family ran)", p / lora)
    } else {
        format!("{:.1}x more parameters", p / lora)
    }
}

/// With several LoRA seeds: the same ratio read at LoRA's mean minus and plus one std, so the
/// seed spread of the target shows in the claim (`curve` on the higher-is-better scale).
fn spread(l: &Point, curve: &[(f64, f64)], metric: Metric) -> String {
    if l.n < 2 || l.std <= 0.0 {
        return String::new();
    }
    let at = |target: f64| match params_to_reach(curve, metric.key(target)) {
        Some(p) => ratio(l.params, p, curve[0].0)
            .replace(" parameters", "")
            .replace(" (no smaller config of this family ran)", ""),
        None => "not reached".to_string(),
    };
    format!(
        "; at LoRA's mean ∓ 1 std ({:.4} / {:.4}): {} / {}",
        l.mean - l.std,
        l.mean + l.std,
        at(l.mean - l.std),
        at(l.mean + l.std)
    )
}

/// Runs the command.
pub fn run(args: &PlotArgs) -> Result<()> {
    let (metric, points) = read_points(&args.results)?;
    let out: PathBuf =
        args.out.clone().unwrap_or_else(|| args.results.parent().unwrap_or(Path::new(".")).to_path_buf());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let stem = args.name.as_deref().unwrap_or(match metric {
        Metric::Accuracy => "accuracy_vs_params",
        Metric::Perplexity => "perplexity_vs_params",
    });
    if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
        bail!(InputError(format!("--name `{stem}`: give a plain file name stem, e.g. accuracy_vs_params")));
    }
    let (png, svg, md) =
        (out.join(format!("{stem}.png")), out.join(format!("{stem}.svg")), out.join(format!("{stem}.md")));
    for p in [&png, &svg, &md] {
        if p.exists() && !args.force {
            bail!(InputError(format!("{} exists; pass --force to replace it", p.display())));
        }
    }
    register_font()?;
    let title = args.title.clone().unwrap_or_else(|| match metric {
        Metric::Accuracy => "Test accuracy vs trainable parameters".into(),
        Metric::Perplexity => "Test perplexity vs trainable parameters".into(),
    });
    {
        let root = BitMapBackend::new(&png, (1200, 750)).into_drawing_area();
        draw(&root, &points, metric, &title).with_context(|| format!("writing {}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, (1200, 750)).into_drawing_area();
        draw(&root, &points, metric, &title).with_context(|| format!("writing {}", svg.display()))?;
    }
    let text = format!(
        "# {title}\n\nFrom `{}` ({} configs). {}.\n\n![plot]({stem}.png)\n\n{}",
        args.results.display(),
        points.len(),
        match metric {
            Metric::Accuracy => "Accuracy: test accuracy at the best-validation step",
            Metric::Perplexity => "Perplexity: test perplexity at the best-validation step (lower is better)",
        },
        report(&points, metric)
    );
    std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
    println!("{}\n{}\n{}", png.display(), svg.display(), md.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(family: &str, params: f64, mean: f64) -> Point {
        Point { family: family.into(), cell: format!("{family}-{params}"), params, mean, std: 0.0, n: 1 }
    }

    #[test]
    fn a_run_counted_twice_or_a_config_that_disagrees_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let row = |cell: &str, seed: u32, params: u32| {
            format!("{cell},lora,--rank 1,{seed},{params},10,0.8,300,0.8,0.8,1.0,1.0,runs/x\n")
        };
        let header = COLUMNS.join(",") + "\n";
        let write = |rows: &[String]| {
            let p = dir.path().join("r.csv");
            std::fs::write(&p, header.clone() + &rows.concat()).unwrap();
            p
        };
        let ok = write(&[row("a", 0, 100), row("a", 1, 100)]);
        assert_eq!(read_points(&ok).unwrap().1[0].n, 2);
        let e = read_points(&write(&[row("a", 0, 100), row("a", 0, 100)])).unwrap_err().to_string();
        assert!(e.contains("rows 2 and 3 are both config `a` seed 0"), "{e}");
        let e = read_points(&write(&[row("a", 0, 100), row("a", 1, 200)])).unwrap_err().to_string();
        assert!(e.contains("rows of one config must agree"), "{e}");
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let p =
            vec![pt("a", 10.0, 0.5), pt("a", 100.0, 0.7), pt("b", 50.0, 0.8), pt("b", 200.0, 0.75), pt("c", 10.0, 0.6)];
        let f = pareto(&p, Metric::Accuracy);
        assert_eq!(f, vec![4, 2]);
    }

    #[test]
    fn a_family_curve_skips_configs_its_family_beats_with_fewer_parameters() {
        let p = vec![pt("s", 100.0, 0.80), pt("s", 400.0, 0.82), pt("s", 400.0, 0.84), pt("s", 2000.0, 0.78)];
        let refs: Vec<&Point> = p.iter().collect();
        let c: Vec<(f64, f64)> = family_curve(&refs, Metric::Accuracy).iter().map(|p| (p.params, p.mean)).collect();
        assert_eq!(c, vec![(100.0, 0.80), (400.0, 0.84)]);
        // Claim 1 reads the curve: 0.82 is reached between 100 and 400 on the front (at 200),
        // not at the weaker 400-parameter config.
        let with_lora = [p.clone(), vec![pt("lora", 1000.0, 0.82)]].concat();
        let r = report(&with_lora, Metric::Accuracy);
        assert!(r.contains("s: reaches it at ≈ 200 params (interpolated): 5.0x fewer"), "{r}");
    }

    #[test]
    fn perplexity_results_read_lower_as_better_against_the_base_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let rows = [
            "base,base,the base model,0,0,0,30.0,0,31.0,31.0,0,0,runs/b",
            "lora-57600,lora,--rank 1,0,57600,0,20.0,100,20.0,20.0,1,1,runs/a",
            "lora-57600,lora,--rank 1,1,57600,0,22.0,100,22.0,22.0,1,1,runs/a1",
            "tiny-64,tucker,--rank 2,0,64,0,26.0,100,26.0,26.0,1,1,runs/c",
            "sq-600,tucker,--rank 4,0,600,0,18.0,100,19.0,19.0,1,1,runs/d",
            "sq-6000,tucker,--rank 8,0,6000,0,25.0,100,25.0,25.0,1,1,runs/e",
        ];
        std::fs::write(&path, PPL_COLUMNS.join(",") + "\n" + &rows.join("\n") + "\n").unwrap();
        let (metric, points) = read_points(&path).unwrap();
        assert_eq!(metric, Metric::Perplexity);
        let r = report(&points, metric);
        // The front keeps the lower perplexity: 64 → 26, 600 → 19; 6000 (25) is beaten by 600.
        assert!(r.contains("- 600 params: sq-600 — 19.0000 (1 seed)"), "{r}");
        assert!(!r.contains("- 6,000 params: sq-6000"), "{r}");
        // LoRA's mean is 21: reached between 64 (26) and 600 (19) at 64·(600/64)^(5/7).
        let p = 64f64 * (600f64 / 64.0).powf(5.0 / 7.0);
        assert!(r.contains(&format!("tucker: reaches it at ≈ {} params", count(p))), "{r}");
        assert!(r.contains("vs base 31.0000 (1 seed): -5.00 perplexity"), "{r}");
        // A perplexity below 1 is not one.
        std::fs::write(&path, PPL_COLUMNS.join(",") + "\n" + &rows[1].replace("20.0,20.0,1", "0.5,20.0,1")).unwrap();
        let e = read_points(&path).unwrap_err().to_string();
        assert!(e.contains("test_ppl_at_best = 0.5; expected a count ≥ 0 and a perplexity ≥ 1"), "{e}");
    }

    #[test]
    fn crossing_is_interpolated_in_log_parameters() {
        let c = [(10.0, 0.5), (1000.0, 0.9)];
        let p = params_to_reach(&c, 0.7).unwrap();
        assert!((p - 100.0).abs() < 1e-9, "{p}");
        assert_eq!(params_to_reach(&c, 0.95), None);
        assert_eq!(params_to_reach(&c, 0.4), Some(10.0));
    }

    #[test]
    fn report_states_both_claims() {
        let p = vec![
            pt("head-only", 0.0, 0.70),
            pt("lora", 9216.0, 0.80),
            pt("tucker-m3", 50.0, 0.74),
            pt("tucker-m3", 900.0, 0.82),
        ];
        let r = report(&p, Metric::Accuracy);
        assert!(r.contains("tucker-m3: reaches it at"), "{r}");
        assert!(r.contains("(lora-9216, 9,216 params) reaches 0.8000"), "{r}");
        // A family whose smallest config already beats LoRA r=1 but has more parameters: a bound.
        let big = [p.clone(), vec![pt("kron", 12000.0, 0.81)]].concat();
        let r = report(&big, Metric::Accuracy);
        assert!(r.contains("kron: already at its smallest point (12,000 params, 0.8100): ≤ 1.3x more"), "{r}");
        assert!(r.contains("+4.00 points"), "{r}");
        // One seed has no spread to show: no "± 0.0000".
        assert!(r.contains("0.7000 (1 seed)") && !r.contains("± 0.0000"), "{r}");
        let three = Point { std: 0.0125, n: 3, ..pt("lora", 9216.0, 0.8) };
        assert_eq!(three.accuracy(), "0.8000 ± 0.0125");
        assert!(r.contains("(one seed on a side: no spread to compare with)"), "{r}");
    }

    #[test]
    fn claims_carry_the_seed_spread() {
        let seeds = |p: Point, std: f64| Point { std, n: 3, ..p };
        let p = vec![
            seeds(pt("head-only", 0.0, 0.70), 0.01),
            seeds(pt("lora", 10000.0, 0.80), 0.01),
            seeds(pt("dense", 10.0, 0.72), 0.01),
            seeds(pt("dense", 1000.0, 0.82), 0.01),
        ];
        let r = report(&p, Metric::Accuracy);
        // 0.80 is reached at 10^(1 + 2·0.8) ≈ 398 params; 0.79 at 10^(1 + 2·0.7) ≈ 251, 0.81 at
        // 10^(1 + 2·0.9) ≈ 631.
        assert!(r.contains("dense: reaches it at ≈ 398 params (interpolated): 25.1x fewer parameters"), "{r}");
        assert!(r.contains("at LoRA's mean ∓ 1 std (0.7900 / 0.8100): 39.8x fewer / 15.8x fewer"), "{r}");
        // +2 points with a standard error of sqrt(2·0.01²/3) = 0.82 points.
        assert!(r.contains("+2.00 points (standard error of the difference 0.82 points: 2.4 standard errors)"), "{r}");
        // Below LoRA's mean but inside its spread: the reading at mean - 1 std still shows.
        let close = vec![p[1].clone(), seeds(pt("near", 100.0, 0.70), 0.0), seeds(pt("near", 1000.0, 0.795), 0.0)];
        let r = report(&close, Metric::Accuracy);
        assert!(
            r.contains(
                "near: does not reach it (best 0.7950 at 1,000 params); at LoRA's mean ∓ 1 std (0.7900 / 0.8100): \
                 11.3x fewer / not reached"
            ),
            "{r}"
        );
        let out_of_reach = vec![p[1].clone(), seeds(pt("tiny", 50.0, 0.805), 0.0)];
        let r = report(&out_of_reach, Metric::Accuracy);
        assert!(
            r.contains(
                "≥ 200.0x fewer parameters; at LoRA's mean ∓ 1 std (0.7900 / 0.8100): ≥ 200.0x fewer / not reached"
            ),
            "{r}"
        );
    }
}
