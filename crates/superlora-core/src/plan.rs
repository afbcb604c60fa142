//! The plan: plain integers, no tensors (spec §3 steps 1–3 and 5, and the parameter count).
//!
//! Given the ordered adapted weights (d_out x d_in each) and an [`AdapterConfig`], the plan fixes
//! the groups (their ranges in the concatenated update vector of length N), n_g = ⌈ρ·N_g⌉, the
//! fold sides, the factor shapes, where each group's values land in each layer, and the trainable
//! parameter count. Tensor code ([`crate::SuperLora`]) and the dense oracle ([`crate::oracle`])
//! both follow the plan, so they cannot disagree on shapes.
//!
//! Symbol → field: N → [`Plan::total_entries`]; G → `groups.len()`; N_g → [`GroupPlan::len`];
//! n_g → [`GroupPlan::n`]; s / (rows, cols) → [`GroupPlan::sides`]; M → `sides.len()`.

use serde::Serialize;

use crate::config::{AdapterConfig, Factorization, Fold, Projection};
use crate::error::{Error, Result};
use crate::factor;
use crate::math::{DecimalRatio, ceil_root};

/// Largest group the fixed projections index (their permutations are stored as `u32`).
pub const MAX_GROUP_LEN: usize = 1 << 31;

/// One adapted weight: W_l with `rows = d_out`, `cols = d_in`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerShape {
    /// The weight's name (tensor name in the model file, or `layer<i>` for `--shapes`).
    pub name: String,
    /// d_out.
    pub rows: usize,
    /// d_in.
    pub cols: usize,
}

impl LayerShape {
    /// A weight named `name` of shape `rows x cols`.
    pub fn new(name: impl Into<String>, rows: usize, cols: usize) -> Self {
        LayerShape { name: name.into(), rows, cols }
    }
    /// d_out · d_in.
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
}

/// A layer placed in the concatenated update vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerPlan {
    /// The weight's name.
    pub name: String,
    /// d_out.
    pub rows: usize,
    /// d_in.
    pub cols: usize,
    /// Offset of this layer's first entry in the vector of length N.
    pub offset: usize,
}

/// A contiguous piece shared by one group and one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Index of the layer.
    pub layer: usize,
    /// Offset inside the layer's flattened (row-major) update.
    pub layer_offset: usize,
    /// Offset inside the group's projected vector v_g.
    pub group_offset: usize,
    /// Number of entries.
    pub len: usize,
}

/// How one tensor X (a group's, or one Kronecker factor's) is produced from trainable numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FactorPlan {
    /// X itself is trainable, of shape `shape`.
    Dense {
        /// Shape of the trainable tensor.
        shape: Vec<usize>,
    },
    /// X = A·Bᵀ, A: rows x rank, B: cols x rank.
    Lora {
        /// Rows of X (and of A).
        rows: usize,
        /// Columns of X (rows of B).
        cols: usize,
        /// r.
        rank: usize,
    },
    /// X = C ×₁ U₁ … ×_M U_M; C: rank^M, U_m: sides[m] x rank.
    Tucker {
        /// Side of X in each mode.
        sides: Vec<usize>,
        /// r.
        rank: usize,
    },
    /// X = X₁ ⊗ … ⊗ X_K; mode m of X has size Π_k (side of X_k in mode m).
    Kronecker {
        /// The K factors, in product order.
        factors: Vec<FactorPlan>,
    },
    /// VeRA ([`crate::factor::vera`]): X = diag(b) · B · diag(d) · A, b: rows, d: rank trainable;
    /// A, B frozen slices of (rank x shared_cols) and (shared_rows x rank) matrices from `seed`.
    Vera {
        /// d_out.
        rows: usize,
        /// d_in.
        cols: usize,
        /// r.
        rank: usize,
        /// Largest d_out over the adapted weights (rows of the shared B).
        shared_rows: usize,
        /// Largest d_in over the adapted weights (columns of the shared A).
        shared_cols: usize,
        /// Seed of the shared frozen matrices.
        seed: u64,
    },
}

impl FactorPlan {
    /// Shape of the produced tensor X.
    pub fn output_shape(&self) -> Vec<usize> {
        match self {
            FactorPlan::Dense { shape } => shape.clone(),
            FactorPlan::Lora { rows, cols, .. } | FactorPlan::Vera { rows, cols, .. } => vec![*rows, *cols],
            FactorPlan::Tucker { sides, .. } => sides.clone(),
            FactorPlan::Kronecker { factors } => {
                let mut out: Vec<usize> = vec![1; factors.first().map_or(0, |f| f.output_shape().len())];
                for f in factors {
                    for (o, s) in out.iter_mut().zip(f.output_shape()) {
                        *o *= s;
                    }
                }
                out
            }
        }
    }

    /// Trainable parameters of this factor (each family's own count).
    pub fn params(&self) -> usize {
        match self {
            FactorPlan::Dense { shape } => factor::dense::params(shape),
            FactorPlan::Lora { rows, cols, rank } => factor::lora::params(*rows, *cols, *rank),
            FactorPlan::Tucker { sides, rank } => factor::tucker::params(sides, *rank),
            FactorPlan::Kronecker { factors } => factors.iter().map(FactorPlan::params).sum(),
            FactorPlan::Vera { rows, rank, .. } => factor::vera::params(*rows, *rank),
        }
    }

    /// The trainable tensors' shapes, with their names relative to the factor (each family's
    /// own names: `dense`, `lora_a`, `lora_b`, `tucker_core`, `tucker_u.<m>`, `kron.<k>.<...>`,
    /// `vera_lambda_b`, `vera_lambda_d`).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            FactorPlan::Dense { shape } => factor::dense::tensor_shapes(shape),
            FactorPlan::Lora { rows, cols, rank } => factor::lora::tensor_shapes(*rows, *cols, *rank),
            FactorPlan::Tucker { sides, rank } => factor::tucker::tensor_shapes(sides, *rank),
            FactorPlan::Kronecker { factors } => factor::kronecker::tensor_shapes(factors),
            FactorPlan::Vera { rows, rank, .. } => factor::vera::tensor_shapes(*rows, *rank),
        }
    }

    /// A one-line human description of the factor shapes (`A 768x7, B 768x7`).
    pub fn describe(&self) -> String {
        match self {
            FactorPlan::Dense { shape } => factor::dense::describe(shape),
            FactorPlan::Lora { rows, cols, rank } => factor::lora::describe(*rows, *cols, *rank),
            FactorPlan::Tucker { sides, rank } => factor::tucker::describe(sides, *rank),
            FactorPlan::Kronecker { factors } => factor::kronecker::describe(factors),
            FactorPlan::Vera { rows, cols, rank, .. } => factor::vera::describe(*rows, *cols, *rank),
        }
    }
}

/// The fixed projection of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProjectionPlan {
    /// v_g = x_g.
    Identity,
    /// v_g[π(i)] = x_g[i].
    Shuffle,
    /// v_g = F(x_g), padded to `padded` = 2^⌈log2 N_g⌉ inside.
    Fastfood {
        /// Lh.
        padded: usize,
    },
    /// v_g = Re(IDFT2) of n_g coefficients placed in a `rows` x `cols` spectrum
    /// ([`crate::projection::fourier`]).
    Fourier {
        /// d_out.
        rows: usize,
        /// d_in.
        cols: usize,
    },
}

/// Everything fixed about one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    /// g.
    pub index: usize,
    /// Offset of the group's first entry in the vector of length N.
    pub start: usize,
    /// N_g.
    pub len: usize,
    /// n_g = ⌈ρ·N_g⌉: values produced by the factorization.
    pub n: usize,
    /// Fold sides: M times s (square fold) or (rows, cols) (natural fold).
    pub sides: Vec<usize>,
    /// How X_g is produced.
    pub factor: FactorPlan,
    /// F_g.
    pub projection: ProjectionPlan,
    /// Trainable parameters of this group.
    pub params: usize,
    /// Where v_g lands, in order.
    pub segments: Vec<Segment>,
}

impl GroupPlan {
    /// Indices of the first and last layer this group touches.
    pub fn layer_range(&self) -> (usize, usize) {
        let first = self.segments.first().map_or(0, |s| s.layer);
        let last = self.segments.last().map_or(0, |s| s.layer);
        (first, last)
    }
}

/// The resolved plan of an adapter over an ordered list of weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// The settings it was built from.
    pub config: AdapterConfig,
    /// The adapted weights in model order, with their offsets.
    pub layers: Vec<LayerPlan>,
    /// The groups, in vector order.
    pub groups: Vec<GroupPlan>,
    /// N = Σ d_out·d_in.
    pub total_entries: usize,
    /// Σ over groups of the factorization counts. The head, if any, is counted elsewhere.
    pub trainable_params: usize,
}

impl Plan {
    /// Plans `config` over `shapes` (in model order).
    pub fn new(shapes: &[LayerShape], config: &AdapterConfig) -> Result<Plan> {
        config.validate()?;
        if shapes.is_empty() {
            return Err(Error::Shapes("no weights to adapt".into()));
        }
        let mut layers = Vec::with_capacity(shapes.len());
        let mut offset = 0usize;
        for s in shapes {
            if s.rows == 0 || s.cols == 0 {
                return Err(Error::Shapes(format!("`{}` has an empty shape {}x{}", s.name, s.rows, s.cols)));
            }
            let numel =
                s.rows.checked_mul(s.cols).ok_or_else(|| Error::Shapes(format!("`{}` is too large", s.name)))?;
            layers.push(LayerPlan { name: s.name.clone(), rows: s.rows, cols: s.cols, offset });
            offset = offset.checked_add(numel).ok_or_else(|| Error::Shapes("total size overflows".into()))?;
        }
        let total = offset;
        let ranges = match config.fold {
            Fold::Natural => natural_ranges(shapes, config.groups)?,
            Fold::Square => square_ranges(total, config.groups.unwrap_or(1))?,
        };
        let ratio = DecimalRatio::from_f64(config.projection.ratio())?;
        let shared =
            (shapes.iter().map(|s| s.rows).max().unwrap_or(0), shapes.iter().map(|s| s.cols).max().unwrap_or(0));
        let mut groups = Vec::with_capacity(ranges.len());
        for (index, (start, len, natural_shape)) in ranges.into_iter().enumerate() {
            if len > MAX_GROUP_LEN {
                return Err(Error::config(
                    "groups",
                    ranges_len_hint(config),
                    format!(
                        "group {index} would hold {len} entries; at most {MAX_GROUP_LEN} per group — use more groups"
                    ),
                ));
            }
            let n = match config.projection {
                Projection::Fourier { count } => crate::projection::fourier::check_count(count, natural_shape, index)?,
                _ => ratio.ceil_mul(len as u64) as usize,
            };
            let sides = match natural_shape {
                Some((rows, cols)) => vec![rows, cols],
                None => {
                    let s = ceil_root(n as u64, config.order as u32) as usize;
                    vec![s; config.order]
                }
            };
            let factor = match config.factorization {
                Factorization::Vera { rank } => {
                    factor::vera::plan(sides[0], sides[1], rank, shared, config.seed, index)?
                }
                ref f => plan_factor(f, &sides, n, index)?,
            };
            let projection = match config.projection {
                Projection::Identity => ProjectionPlan::Identity,
                Projection::Shuffle => ProjectionPlan::Shuffle,
                Projection::Fastfood { .. } => ProjectionPlan::Fastfood { padded: len.next_power_of_two() },
                Projection::Fourier { .. } => ProjectionPlan::Fourier { rows: sides[0], cols: sides[1] },
            };
            let params = factor.params();
            let segments = segments_of(&layers, start, len);
            groups.push(GroupPlan { index, start, len, n, sides, factor, projection, params, segments });
        }
        let trainable_params = groups.iter().map(|g| g.params).sum();
        Ok(Plan { config: config.clone(), layers, groups, total_entries: total, trainable_params })
    }

    /// Parameters weight-wise LoRA of rank 1 would train on the same weights: Σ (d_in + d_out).
    pub fn lora_rank1_params(&self) -> usize {
        self.layers.iter().map(|l| l.rows + l.cols).sum()
    }

    /// Segments of layer `l`, in order of their offset inside the layer, as (group, segment).
    /// Groups lie in offset order, so only those overlapping the layer are visited.
    pub fn layer_segments(&self, l: usize) -> Vec<(usize, Segment)> {
        let Some(layer) = self.layers.get(l) else { return Vec::new() };
        let (ls, le) = (layer.offset, layer.offset + layer.rows * layer.cols);
        let first = self.groups.partition_point(|g| g.start + g.len <= ls);
        let mut v: Vec<(usize, Segment)> = self.groups[first..]
            .iter()
            .take_while(|g| g.start < le)
            .flat_map(|g| g.segments.iter().filter(|s| s.layer == l).map(move |s| (g.index, *s)))
            .collect();
        v.sort_by_key(|(_, s)| s.layer_offset);
        v
    }
}

fn ranges_len_hint(config: &AdapterConfig) -> String {
    config.groups.map_or_else(|| "one per layer".to_string(), |g| g.to_string())
}

/// Natural fold: G runs of consecutive whole layers (run lengths differ by at most one), each
/// stacked along rows; all layers of a run must share d_in.
type Range = (usize, usize, Option<(usize, usize)>);

fn natural_ranges(shapes: &[LayerShape], groups: Option<usize>) -> Result<Vec<Range>> {
    let l = shapes.len();
    let g = groups.unwrap_or(l);
    if g > l {
        return Err(Error::config(
            "groups",
            g,
            format!(
                "`fold = natural` groups whole layers, so G can be at most the number of layers ({l}); use `fold = square` to cut inside layers"
            ),
        ));
    }
    let mut out = Vec::with_capacity(g);
    let (base, extra) = (l / g, l % g);
    let mut first = 0usize;
    let mut start = 0usize;
    for gi in 0..g {
        let count = base + usize::from(gi < extra);
        let run = &shapes[first..first + count];
        let cols = run[0].cols;
        if let Some(bad) = run.iter().find(|s| s.cols != cols) {
            return Err(Error::config(
                "groups",
                g,
                format!(
                    "`fold = natural` stacks a group's layers along rows, so they must share d_in, but group {gi} holds `{}` ({}x{}) and `{}` ({}x{}); choose G so each run has one d_in (G = {l}, one group per layer, always works) or use `fold = square`",
                    run[0].name, run[0].rows, run[0].cols, bad.name, bad.rows, bad.cols
                ),
            ));
        }
        let rows: usize = run.iter().map(|s| s.rows).sum();
        let len = rows * cols;
        out.push((start, len, Some((rows, cols))));
        start += len;
        first += count;
    }
    Ok(out)
}

/// Square fold: G contiguous chunks of N whose sizes differ by at most one (the first N mod G are
/// one longer).
fn square_ranges(total: usize, g: usize) -> Result<Vec<Range>> {
    if g > total {
        return Err(Error::config("groups", g, format!("G cannot exceed the number of update entries N = {total}")));
    }
    let (base, extra) = (total / g, total % g);
    let mut start = 0;
    Ok((0..g)
        .map(|gi| {
            let len = base + usize::from(gi < extra);
            let r = (start, len, None);
            start += len;
            r
        })
        .collect())
}

/// The pieces where group `[start, start+len)` meets each layer. Layers lie in offset order, so
/// only the layers from the first one ending after `start` to the last one beginning before the
/// group's end are visited (a binary search, not a scan: plans of many layers and groups stay
/// linear). [`segments_scan`] is the obvious version, compared with this one in the tests.
fn segments_of(layers: &[LayerPlan], start: usize, len: usize) -> Vec<Segment> {
    let end = start + len;
    let first = layers.partition_point(|l| l.offset + l.rows * l.cols <= start);
    layers[first..]
        .iter()
        .take_while(|l| l.offset < end)
        .enumerate()
        .filter_map(|(k, l)| meet(first + k, l, start, end))
        .collect()
}

/// Where group `[start, end)` meets layer `l` (index `i`), if it does.
fn meet(i: usize, l: &LayerPlan, start: usize, end: usize) -> Option<Segment> {
    let (ls, le) = (l.offset, l.offset + l.rows * l.cols);
    let (s, e) = (start.max(ls), end.min(le));
    (s < e).then(|| Segment { layer: i, layer_offset: s - ls, group_offset: s - start, len: e - s })
}

/// The oracle of [`segments_of`]: every layer checked.
#[cfg(test)]
fn segments_scan(layers: &[LayerPlan], start: usize, len: usize) -> Vec<Segment> {
    layers.iter().enumerate().filter_map(|(i, l)| meet(i, l, start, start + len)).collect()
}

/// Factor shapes of one group with fold sides `sides` producing `n` values (each family plans
/// and checks its own).
fn plan_factor(f: &Factorization, sides: &[usize], n: usize, group: usize) -> Result<FactorPlan> {
    match *f {
        Factorization::Dense => Ok(FactorPlan::Dense { shape: vec![n] }),
        Factorization::Lora { rank } => factor::lora::plan(sides[0], sides[1], rank, group),
        Factorization::Tucker { rank } => factor::tucker::plan(sides, rank, group),
        Factorization::Kronecker { factors, rank } => Ok(factor::kronecker::plan(sides, factors, rank)),
        Factorization::Vera { .. } => {
            Err(Error::Shapes("a vera factor is planned per weight, not inside a group".into()))
        }
    }
}

/// The Kronecker side-split rule, in words, for recording in adapter files.
pub const KRONECKER_SIDE_RULE: &str = "per mode m with side s: s_km = ceil(s^(1/K)) for k < K, s_Km = ceil(s / prod_{k<K} s_km); factor k is dense if rank >= min_m s_km or M = 1, else lora (M = 2) or tucker (M >= 3) of the rank; natural fold crops the product to (rows, cols), square fold keeps the first n_g entries of its row-major flattening";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdapterSpec, FactorKind, ProjectionKind};

    fn plan(shapes: &[LayerShape], spec: AdapterSpec) -> Result<Plan> {
        Plan::new(shapes, &spec.resolve()?)
    }

    fn square(groups: usize, order: usize, factor: FactorKind, rank: Option<usize>, ratio: Option<f64>) -> AdapterSpec {
        AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(groups),
            order: Some(order),
            factor: Some(factor),
            rank,
            ratio,
            ..Default::default()
        }
    }

    #[test]
    fn worked_table_square_rows() {
        let s = vec![LayerShape::new("w", 768, 768)];
        let rows = [
            (square(1, 2, FactorKind::Lora, Some(7), None), 10_752),
            (square(4, 2, FactorKind::Lora, Some(24), None), 73_728),
            (square(12, 3, FactorKind::Tucker, Some(5), None), 8_160),
            (square(12, 4, FactorKind::Tucker, Some(5), None), 11_100),
            (square(1, 5, FactorKind::Tucker, Some(1), None), 76),
            (square(4, 3, FactorKind::Tucker, Some(4), Some(0.01)), 832),
            (square(1, 5, FactorKind::Tucker, Some(1), Some(0.01)), 31),
        ];
        for (spec, want) in rows {
            let p = plan(&s, spec.clone()).unwrap();
            assert_eq!(p.trainable_params, want, "{spec:?}");
        }
    }

    #[test]
    fn segment_search_agrees_with_the_scan() {
        // Uneven layers, groups from one to more than the layers, both folds.
        let s: Vec<_> = (0..7).map(|i| LayerShape::new(format!("l{i}"), 2 + i % 3, 3 + (i * 5) % 4)).collect();
        for groups in [1, 2, 3, 5, 7, 11, 40] {
            for spec in [
                square(groups, 1, FactorKind::Dense, None, None),
                AdapterSpec { factor: Some(FactorKind::Dense), ..Default::default() },
            ] {
                let p = plan(&s, spec.clone()).unwrap();
                for g in &p.groups {
                    assert_eq!(g.segments, segments_scan(&p.layers, g.start, g.len), "{spec:?} group {}", g.index);
                }
                for l in 0..p.layers.len() {
                    let mut want: Vec<(usize, Segment)> = p
                        .groups
                        .iter()
                        .flat_map(|g| g.segments.iter().filter(|x| x.layer == l).map(move |x| (g.index, *x)))
                        .collect();
                    want.sort_by_key(|(_, x)| x.layer_offset);
                    assert_eq!(p.layer_segments(l), want, "{spec:?} layer {l}");
                }
            }
        }
    }

    #[test]
    fn weight_wise_lora_vit_b() {
        let s: Vec<_> = (0..24).map(|i| LayerShape::new(format!("l{i}"), 768, 768)).collect();
        let spec = AdapterSpec { rank: Some(1), ..Default::default() };
        let p = plan(&s, spec).unwrap();
        assert_eq!(p.groups.len(), 24);
        assert_eq!(p.trainable_params, 36_864);
        assert_eq!(p.lora_rank1_params(), 36_864);
        assert_eq!(p.total_entries, 14_155_776);
    }

    #[test]
    fn square_groups_cross_layers_and_differ_by_at_most_one() {
        let s = vec![LayerShape::new("a", 3, 5), LayerShape::new("b", 2, 7)];
        let p = plan(&s, square(4, 1, FactorKind::Dense, None, None)).unwrap();
        let lens: Vec<_> = p.groups.iter().map(|g| g.len).collect();
        assert_eq!(lens, vec![8, 7, 7, 7]);
        assert_eq!(p.groups[1].segments.len(), 1, "group 1 ends exactly where layer a ends");
        let p = plan(&s, square(3, 1, FactorKind::Dense, None, None)).unwrap();
        let lens: Vec<_> = p.groups.iter().map(|g| g.len).collect();
        assert_eq!(lens, vec![10, 10, 9]);
        assert_eq!(p.groups[1].segments.len(), 2, "group 1 spans both layers");
        assert_eq!(p.trainable_params, 29);
    }

    #[test]
    fn natural_fold_rejects_mixed_d_in() {
        let s = vec![LayerShape::new("q", 4, 8), LayerShape::new("fc2", 8, 16)];
        let e = plan(&s, AdapterSpec { groups: Some(1), rank: Some(1), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("`groups` = 1") && e.contains("d_in"), "{e}");
        assert!(plan(&s, AdapterSpec { rank: Some(1), ..Default::default() }).is_ok());
    }

    #[test]
    fn rank_larger_than_side_is_rejected() {
        let s = vec![LayerShape::new("w", 4, 4)];
        let e = plan(&s, AdapterSpec { rank: Some(5), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("`rank` = 5"), "{e}");
        let e = plan(&s, square(1, 3, FactorKind::Tucker, Some(4), None)).unwrap_err().to_string();
        assert!(e.contains("`rank` = 4") && e.contains("side 3"), "{e}");
    }

    #[test]
    fn too_many_groups_is_rejected() {
        let s = vec![LayerShape::new("w", 2, 2)];
        let e = plan(&s, square(5, 1, FactorKind::Dense, None, None)).unwrap_err().to_string();
        assert!(e.contains("`groups` = 5") && e.contains("N = 4"), "{e}");
        let e = plan(&s, AdapterSpec { groups: Some(2), rank: Some(1), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("`groups` = 2"), "{e}");
    }

    #[test]
    fn kronecker_side_split() {
        let s = vec![LayerShape::new("w", 768, 768)];
        let spec = AdapterSpec { kron: Some(2), rank: Some(4), ..square(1, 2, FactorKind::Kronecker, Some(4), None) };
        let p = plan(&s, spec).unwrap();
        let FactorPlan::Kronecker { factors } = &p.groups[0].factor else { panic!() };
        assert_eq!(factors[0], FactorPlan::Lora { rows: 28, cols: 28, rank: 4 });
        assert_eq!(factors[1], FactorPlan::Lora { rows: 28, cols: 28, rank: 4 });
        assert_eq!(p.groups[0].factor.output_shape(), vec![784, 784]);
        // K = 3 at side 384: 8, 8, then ceil(384 / 64) = 6; rank 6 >= 6 makes the last one dense.
        let s = vec![LayerShape::new("w", 384, 384)];
        let spec = AdapterSpec { kron: Some(3), ..square(1, 2, FactorKind::Kronecker, Some(6), None) };
        let p = plan(&s, spec).unwrap();
        let FactorPlan::Kronecker { factors } = &p.groups[0].factor else { panic!() };
        assert_eq!(factors[2], FactorPlan::Dense { shape: vec![6, 6] });
        assert_eq!(p.trainable_params, 2 * (16 * 6) + 36);
    }

    #[test]
    fn fastfood_pads_to_a_power_of_two() {
        let s = vec![LayerShape::new("w", 768, 768)];
        let spec = AdapterSpec {
            projection: Some(ProjectionKind::Fastfood),
            ..square(4, 3, FactorKind::Tucker, Some(4), Some(0.01))
        };
        let p = plan(&s, spec).unwrap();
        assert_eq!(p.groups[0].projection, ProjectionPlan::Fastfood { padded: 262_144 });
        assert_eq!(p.groups[0].n, 1475);
        assert_eq!(p.groups[0].sides, vec![12, 12, 12]);
    }
}
