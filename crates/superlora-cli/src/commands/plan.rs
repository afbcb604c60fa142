//! `superlora plan`: the resolved plan as a table or JSON.

use std::fmt::Write as _;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use superlora_core::Plan;

use crate::flags::{AdapterArgs, ShapeSource, at_least_one};
use crate::settings::{resolve_adapter, resolve_shapes};

pub(crate) const PLAN_ABOUT: &str = "\
Resolve an adapter config over the weights it adapts and print the plan: for each group the layers \
it covers, N_g (update entries), n_g = ceil(ratio * N_g) (values the factorization produces), the \
fold sides, the factor shapes and the trainable parameters, then the total. Nothing is trained and \
no weights are read: with --model only the safetensors header is parsed.

The weights come from --shapes (OUTxIN with an optional repeat count) or from --model with \
--targets / --targets-regex. Settings come from flags, a TOML file (--config, same keys as the flags: \
fold, groups, order, factor, rank, kron, projection, ratio, scale, seed), or both; flags win.

Defaults: plain weight-wise LoRA of rank 8 (fold natural, one group per layer, order 2).";

pub(crate) const PLAN_EXAMPLES: &str = "\
Examples:
  # ViT-B query+value, weight-wise LoRA r=1 (36,864 parameters)
  superlora plan --shapes 768x768*24 --rank 1
  # one 768x768 weight, square fold, 12 groups, order-3 Tucker of rank 5
  # (8,160 parameters)
  superlora plan --shapes 768x768 --fold square --groups 12 --order 3 \\
    --factor tucker --rank 5
  # 4 groups of order-3 Tucker of rank 4 through fastfood of ratio 0.01, as JSON
  superlora plan --shapes 768x768 --fold square --groups 4 --order 3 \\
    --factor tucker --rank 4 --ratio 0.01 --json
  # a real model's query and value weights
  superlora plan --model model.safetensors --targets query,value \\
    --fold square --factor tucker --rank 4
  # which configs fit in 1,000 parameters on ViT-B query+value?
  superlora plan --shapes 768x768*24 --budget 1000";

/// `superlora plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The weights to adapt.
    #[command(flatten)]
    pub source: ShapeSource,
    /// With --model: comma-separated target names, each an exact module/tensor name or a dotted
    /// suffix (`query` matches `encoder.layer.0.attention.self.query.weight`) [default: query,value].
    #[arg(long, value_name = "NAMES", conflicts_with = "targets_regex")]
    pub targets: Option<String>,
    /// With --model: a regex that must match a whole module path (the weight's name without
    /// `.weight`, e.g. `encoder\.layer\.[0-5]\.attention\.self\.query`).
    #[arg(long, value_name = "REGEX")]
    pub targets_regex: Option<String>,
    /// Adapter settings.
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Search the config space for the configs closest to P trainable parameters (not above),
    /// per family, instead of planning one config.
    #[arg(long, value_name = "P", value_parser = at_least_one)]
    pub budget: Option<usize>,
    /// With --budget: how many configs to list per family.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = at_least_one, requires = "budget")]
    pub per_family: usize,
    /// Print JSON (with `trainable_params` and a `groups` array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Groups printed in full before the table is cut short (JSON always has all).
const MAX_ROWS: usize = 48;

/// Runs the command.
pub fn run(args: &PlanArgs) -> Result<()> {
    let shapes = resolve_shapes(&args.source, args.targets.as_deref(), args.targets_regex.as_deref())?;
    if let Some(budget) = args.budget {
        return budget_table(&shapes, budget, args);
    }
    let config = resolve_adapter(&args.adapter)?;
    let plan = Plan::new(&shapes, &config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&PlanJson::new(&plan))?);
    } else {
        print!("{}", table(&plan));
    }
    Ok(())
}

/// `plan --budget`: the configs closest to the budget, per family.
fn budget_table(shapes: &[superlora_core::LayerShape], budget: usize, args: &PlanArgs) -> Result<()> {
    if args.adapter.shapes_adapter() {
        return Err(
            crate::settings::InputError("--budget searches every config; drop the adapter settings".into()).into()
        );
    }
    let found = superlora_core::budget::search(shapes, budget, args.per_family.max(1));
    let n: usize = shapes.iter().map(superlora_core::LayerShape::numel).sum();
    if args.json {
        #[derive(Serialize)]
        struct BudgetJson<'a> {
            budget: usize,
            total_entries: usize,
            lora_rank1_params: usize,
            candidates: &'a [superlora_core::budget::Candidate],
        }
        let r1 = shapes.iter().map(|s| s.rows + s.cols).sum();
        println!(
            "{}",
            serde_json::to_string_pretty(&BudgetJson {
                budget,
                total_entries: n,
                lora_rank1_params: r1,
                candidates: &found
            })?
        );
        return Ok(());
    }
    println!(
        "Configs with at most {} trainable parameters on {} weights (N = {}), closest first per family:\n",
        thousands(budget),
        shapes.len(),
        thousands(n)
    );
    let mut family = String::new();
    for c in &found {
        if c.family != family {
            family = c.family.clone();
            println!("{family}");
        }
        println!("  {:>12}  {}", thousands(c.params), c.spec.flags());
    }
    if found.is_empty() {
        println!("(nothing fits: the smallest config here has more parameters)");
    }
    Ok(())
}

#[derive(Serialize)]
struct PlanJson<'a> {
    trainable_params: usize,
    total_entries: usize,
    lora_rank1_params: usize,
    config: &'a superlora_core::AdapterConfig,
    layers: &'a [superlora_core::LayerPlan],
    groups: Vec<GroupJson<'a>>,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    #[serde(flatten)]
    group: &'a superlora_core::GroupPlan,
    first_layer: usize,
    last_layer: usize,
}

impl<'a> PlanJson<'a> {
    fn new(plan: &'a Plan) -> Self {
        PlanJson {
            trainable_params: plan.trainable_params,
            total_entries: plan.total_entries,
            lora_rank1_params: plan.lora_rank1_params(),
            config: &plan.config,
            layers: &plan.layers,
            groups: plan
                .groups
                .iter()
                .map(|g| {
                    let (first_layer, last_layer) = g.layer_range();
                    GroupJson { group: g, first_layer, last_layer }
                })
                .collect(),
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn layers_cell(plan: &Plan, g: &superlora_core::GroupPlan) -> String {
    let mark = |seg: &superlora_core::Segment| {
        let l = &plan.layers[seg.layer];
        if seg.len < l.rows * l.cols { "*" } else { "" }
    };
    match (g.segments.first(), g.segments.last()) {
        (Some(a), Some(b)) if a.layer == b.layer => format!("{}{}", a.layer, mark(a)),
        (Some(a), Some(b)) => format!("{}{}-{}{}", a.layer, mark(a), b.layer, mark(b)),
        _ => "-".into(),
    }
}

fn sides_cell(g: &superlora_core::GroupPlan, natural: bool) -> String {
    if natural || g.sides.iter().any(|s| *s != g.sides[0]) {
        g.sides.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
    } else if g.sides.len() == 1 {
        g.sides[0].to_string()
    } else {
        format!("{}^{}", g.sides[0], g.sides.len())
    }
}

/// The human-readable plan.
pub fn table(plan: &Plan) -> String {
    let mut s = String::new();
    let natural = plan.config.fold == superlora_core::Fold::Natural;
    let _ = writeln!(
        s,
        "SuperLoRA plan: {} adapted weight{}, N = {} update entries",
        plan.layers.len(),
        if plan.layers.len() == 1 { "" } else { "s" },
        thousands(plan.total_entries)
    );
    let _ = writeln!(s, "config: {}\n", plan.config.describe(plan.groups.len()));
    let rows: Vec<[String; 7]> = plan
        .groups
        .iter()
        .map(|g| {
            [
                g.index.to_string(),
                layers_cell(plan, g),
                thousands(g.len),
                thousands(g.n),
                sides_cell(g, natural),
                g.factor.describe(),
                thousands(g.params),
            ]
        })
        .collect();
    let header = ["group", "layers", "N_g", "n_g", "fold", "factors", "params"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            // Numbers right-aligned, text left-aligned.
            if matches!(i, 0 | 2 | 3 | 6) {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(pad));
            }
            if i < 6 {
                l.push_str("  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", line(header));
    let shown = if rows.len() > MAX_ROWS { MAX_ROWS - 4 } else { rows.len() };
    for r in rows.iter().take(shown) {
        let _ = writeln!(s, "{}", line(r.each_ref().map(String::as_str)));
    }
    if shown < rows.len() {
        let _ = writeln!(s, "… {} more groups (use --json to see all) …", rows.len() - shown - 2);
        for r in &rows[rows.len() - 2..] {
            let _ = writeln!(s, "{}", line(r.each_ref().map(String::as_str)));
        }
    }
    if plan.groups.iter().any(|g| layers_cell(plan, g).contains('*')) {
        let _ = writeln!(s, "(* = a layer shared with a neighbouring group)");
    }
    let _ = writeln!(s, "\ntrainable parameters: {}", thousands(plan.trainable_params));
    let r1 = plan.lora_rank1_params();
    let p = plan.trainable_params;
    let relation = match p.cmp(&r1) {
        std::cmp::Ordering::Equal => "the same count".to_string(),
        std::cmp::Ordering::Less => format!("{:.2}x fewer here", r1 as f64 / p as f64),
        std::cmp::Ordering::Greater => format!("{:.2}x more here", p as f64 / r1 as f64),
    };
    let _ = writeln!(s, "weight-wise LoRA rank 1 on the same weights: {} ({relation})", thousands(r1));
    s
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(36_864), "36,864");
        assert_eq!(thousands(14_155_776), "14,155,776");
    }
}
