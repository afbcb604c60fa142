//! Adapter settings in two forms.
//!
//! - [`AdapterSpec`]: the flat, all-optional form that users write (CLI flags, a TOML file, a
//!   sweep grid cell). Two specs merge field by field ([`AdapterSpec::merge`]), so flags override
//!   a file.
//! - [`AdapterConfig`]: the resolved, validated form the planner takes. Invalid combinations are
//!   unrepresentable or rejected by [`AdapterSpec::resolve`] with an error naming the field, the
//!   value and the rule.
//!
//! Defaults (spec symbols in brackets): `fold = natural` with one group per layer [G = L],
//! `factor = lora`, `rank = 8` [r], `order` = 1 for dense, 2 for lora/kronecker, 3 for tucker [M],
//! `projection = identity`, `ratio = 1` [ρ], `scale = 1` [α], `seed = 0`. With no settings at all
//! this is plain weight-wise LoRA of rank 8, the usual baseline.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::math::DecimalRatio;

/// Highest tensor order M the planner accepts.
pub const MAX_ORDER: usize = 8;
/// Highest number of Kronecker factors K.
pub const MAX_KRON: usize = 8;
/// The largest |α| accepted: far beyond any useful scale, and small enough that α times an update
/// of ordinary size stays finite in f32.
pub const MAX_SCALE: f64 = 1e6;

/// How the concatenated update vector is cut into groups (spec §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fold {
    /// Runs of consecutive whole layers with equal `d_in`, stacked along rows. G = L is
    /// weight-wise LoRA.
    Natural,
    /// G contiguous chunks of the whole vector, sizes differing by at most one; chunks may cross
    /// layer boundaries.
    Square,
}

/// The factorization family, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorKind {
    /// X_g itself is trainable.
    Dense,
    /// X_g = A·Bᵀ (M = 2).
    Lora,
    /// X_g = C ×₁ U₁ … ×_M U_M (M ≥ 3).
    Tucker,
    /// X_g = X_g1 ⊗ … ⊗ X_gK (K ≥ 2).
    Kronecker,
    /// VeRA: ΔW_l = Λ_b,l · B · Λ_d,l · A with A, B frozen and shared by every weight
    /// ([`crate::factor::vera`]).
    Vera,
}

/// The fixed projection family, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionKind {
    /// F = identity (ρ = 1).
    Identity,
    /// F = a fixed random permutation of the group (ρ = 1).
    Shuffle,
    /// F = the fastfood transform from n_g = ⌈ρ·N_g⌉ values to N_g (0 < ρ ≤ 1).
    Fastfood,
    /// FourierFT: `count` spectral coefficients per weight at fixed random frequencies,
    /// ΔW_l = α · Re(IDFT2) ([`crate::projection::fourier`]).
    Fourier,
}

/// Flat, optional adapter settings: what a user writes. See the module docs for defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// `natural` or `square`.
    pub fold: Option<Fold>,
    /// Number of groups G (default: L for natural, 1 for square).
    pub groups: Option<usize>,
    /// Tensor order M, 1..=8.
    pub order: Option<usize>,
    /// `dense`, `lora`, `tucker` or `kronecker`.
    pub factor: Option<FactorKind>,
    /// Rank r of lora / tucker / the Kronecker factors.
    pub rank: Option<usize>,
    /// Number of Kronecker factors K (≥ 2 selects `kronecker`; 1 means no Kronecker product).
    pub kron: Option<usize>,
    /// `identity`, `shuffle` or `fastfood`.
    pub projection: Option<ProjectionKind>,
    /// Projection ratio ρ in (0, 1]; below 1 needs `projection = fastfood` and `fold = square`.
    pub ratio: Option<f64>,
    /// Output scale α: ΔW = α · (generated update).
    pub scale: Option<f64>,
    /// Seed of every random initial value and fixed projection.
    pub seed: Option<u64>,
    /// Spectral coefficients per adapted weight of `projection = fourier` (FourierFT's n).
    pub count: Option<usize>,
}

/// The factorization with its parameters, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Factorization {
    /// X_g trainable, n_g parameters.
    Dense,
    /// A·Bᵀ of rank `rank`.
    Lora {
        /// r.
        rank: usize,
    },
    /// Tucker core with every mode of size `rank`.
    Tucker {
        /// r.
        rank: usize,
    },
    /// Kronecker product of `factors` order-M tensors, each dense / lora / tucker by the side rule.
    Kronecker {
        /// K ≥ 2.
        factors: usize,
        /// r of each non-dense factor.
        rank: usize,
    },
    /// VeRA of rank `rank` (natural fold, one group per weight, identity projection).
    Vera {
        /// r.
        rank: usize,
    },
}

/// The projection, resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Projection {
    /// ρ = 1, F = identity.
    Identity,
    /// ρ = 1, F = permutation.
    Shuffle,
    /// F = fastfood, 0 < ρ ≤ 1.
    Fastfood {
        /// ρ.
        ratio: f64,
    },
    /// F = FourierFT's inverse 2-D DFT from `count` coefficients per weight (natural fold, one
    /// group per weight, dense factor).
    Fourier {
        /// n, coefficients per weight.
        count: usize,
    },
}

/// Resolved, validated adapter settings (independent of the model's shapes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Grouping mode.
    pub fold: Fold,
    /// G, or `None` for "one group per layer" under the natural fold.
    pub groups: Option<usize>,
    /// M.
    pub order: usize,
    /// How each group's tensor is produced.
    pub factorization: Factorization,
    /// The fixed projection F.
    pub projection: Projection,
    /// α.
    pub scale: f64,
    /// Seed of all randomness.
    pub seed: u64,
}

impl Projection {
    /// ρ (1 for identity and shuffle).
    pub fn ratio(&self) -> f64 {
        match self {
            Projection::Fastfood { ratio } => *ratio,
            _ => 1.0,
        }
    }
}

impl Factorization {
    /// The rank, if the family has one.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Factorization::Dense => None,
            Factorization::Lora { rank } | Factorization::Tucker { rank } | Factorization::Vera { rank } => Some(*rank),
            Factorization::Kronecker { rank, .. } => Some(*rank),
        }
    }
}

impl AdapterSpec {
    /// `self` with every field that `over` sets replaced by `over`'s value (flags over a file).
    pub fn merge(&self, over: &AdapterSpec) -> AdapterSpec {
        AdapterSpec {
            fold: over.fold.or(self.fold),
            groups: over.groups.or(self.groups),
            order: over.order.or(self.order),
            factor: over.factor.or(self.factor),
            rank: over.rank.or(self.rank),
            kron: over.kron.or(self.kron),
            projection: over.projection.or(self.projection),
            ratio: over.ratio.or(self.ratio),
            scale: over.scale.or(self.scale),
            seed: over.seed.or(self.seed),
            count: over.count.or(self.count),
        }
    }

    /// Fills defaults and checks every rule that does not depend on the model's shapes.
    pub fn resolve(&self) -> Result<AdapterConfig> {
        let fold = self.fold.unwrap_or(Fold::Natural);
        let fourier = self.projection.map_or(self.count.is_some(), |p| p == ProjectionKind::Fourier);
        let factor = match (self.factor, self.kron) {
            (Some(f), _) => f,
            (None, Some(k)) if k >= 2 => FactorKind::Kronecker,
            (None, _) if fourier => FactorKind::Dense,
            (None, _) => FactorKind::Lora,
        };
        let default_order = match factor {
            FactorKind::Dense => 1,
            FactorKind::Lora | FactorKind::Kronecker | FactorKind::Vera => 2,
            FactorKind::Tucker => 3,
        };
        let order = self.order.unwrap_or(default_order);
        if !(1..=MAX_ORDER).contains(&order) {
            return Err(Error::config("order", order, format!("must be between 1 and {MAX_ORDER}")));
        }
        let rank = self.rank.unwrap_or(8);
        if rank == 0 {
            return Err(Error::config("rank", rank, "must be at least 1"));
        }
        if let Some(k) = self.kron {
            if k == 0 {
                return Err(Error::config("kron", k, "must be at least 1 (1 means no Kronecker product)"));
            }
            if k >= 2 && factor != FactorKind::Kronecker {
                return Err(Error::config(
                    "kron",
                    k,
                    format!("K >= 2 needs `factor = kronecker`, but factor is {factor}"),
                ));
            }
        }
        let factorization = match factor {
            FactorKind::Dense => {
                if let Some(r) = self.rank {
                    return Err(Error::config(
                        "rank",
                        r,
                        "a dense factor has no rank; drop `rank` or choose lora/tucker/kronecker",
                    ));
                }
                Factorization::Dense
            }
            FactorKind::Lora => {
                if order != 2 {
                    return Err(Error::config(
                        "order",
                        order,
                        "`factor = lora` needs order 2 (a matrix); use tucker for order >= 3 or dense for 1",
                    ));
                }
                Factorization::Lora { rank }
            }
            FactorKind::Tucker => {
                if order < 3 {
                    return Err(Error::config(
                        "order",
                        order,
                        "`factor = tucker` needs order >= 3; use lora for order 2",
                    ));
                }
                Factorization::Tucker { rank }
            }
            FactorKind::Kronecker => {
                let k = self.kron.unwrap_or(2);
                if !(2..=MAX_KRON).contains(&k) {
                    return Err(Error::config(
                        "kron",
                        k,
                        format!("`factor = kronecker` needs between 2 and {MAX_KRON} factors"),
                    ));
                }
                Factorization::Kronecker { factors: k, rank }
            }
            FactorKind::Vera => {
                crate::factor::vera::check_settings(fold, self.groups, order, self.projection)?;
                Factorization::Vera { rank }
            }
        };

        let ratio = self.ratio.unwrap_or(1.0);
        let exact = DecimalRatio::from_f64(ratio)?;
        let projection_kind = match self.projection {
            Some(p) => p,
            None if !exact.is_one() => ProjectionKind::Fastfood,
            None if self.count.is_some() => ProjectionKind::Fourier,
            None => ProjectionKind::Identity,
        };
        let projection = match projection_kind {
            ProjectionKind::Identity | ProjectionKind::Shuffle if !exact.is_one() => {
                return Err(Error::config(
                    "ratio",
                    ratio,
                    format!(
                        "ratio < 1 needs `projection = fastfood` (a {} projection cannot expand values)",
                        if projection_kind == ProjectionKind::Shuffle { "shuffle" } else { "identity" }
                    ),
                ));
            }
            ProjectionKind::Identity => Projection::Identity,
            ProjectionKind::Shuffle => Projection::Shuffle,
            ProjectionKind::Fastfood => Projection::Fastfood { ratio },
            ProjectionKind::Fourier => Projection::Fourier {
                count: crate::projection::fourier::check_settings(
                    fold,
                    self.groups,
                    &factorization,
                    self.ratio,
                    self.count,
                )?,
            },
        };
        if let Some(c) = self.count
            && projection_kind != ProjectionKind::Fourier
        {
            return Err(Error::config(
                "count",
                c,
                "`count` sets FourierFT's coefficients per weight: it needs `projection = fourier`",
            ));
        }

        if fold == Fold::Natural {
            if !exact.is_one() {
                return Err(Error::config(
                    "ratio",
                    ratio,
                    "ratio < 1 needs `fold = square`: a natural (rows x cols) matrix cannot shrink",
                ));
            }
            if order != 2 && factor != FactorKind::Dense {
                return Err(Error::config(
                    "order",
                    order,
                    "`fold = natural` keeps each group's (rows x cols) matrix, so order must be 2; use `fold = square` for other orders",
                ));
            }
        }
        if let Some(g) = self.groups
            && g == 0
        {
            return Err(Error::config("groups", g, "must be at least 1"));
        }
        let groups = match (fold, self.groups) {
            (_, Some(g)) => Some(g),
            (Fold::Natural, None) => None,
            (Fold::Square, None) => Some(1),
        };
        let default_scale = match projection {
            Projection::Fourier { .. } => crate::projection::fourier::DEFAULT_SCALE,
            _ => 1.0,
        };
        let scale = self.scale.unwrap_or(default_scale);
        if !scale.is_finite() || scale.abs() > MAX_SCALE {
            return Err(Error::config(
                "scale",
                scale,
                format!("must be a finite number of magnitude at most {MAX_SCALE:e} (beyond that ΔW overflows f32)"),
            ));
        }
        Ok(AdapterConfig { fold, groups, order, factorization, projection, scale, seed: self.seed.unwrap_or(0) })
    }
}

impl AdapterConfig {
    /// Checks every rule of [`AdapterSpec::resolve`] on an already-typed config (one read from a
    /// file, or built in code), so no config skips validation by not coming from flags.
    pub fn validate(&self) -> Result<()> {
        let back = self.to_spec().resolve()?;
        if back != *self {
            return Err(Error::config(
                "adapter",
                format!("{self:?}"),
                format!("is not in canonical form (it resolves to {back:?})"),
            ));
        }
        Ok(())
    }

    /// The flat spec that resolves to this config (for writing it back to TOML/JSON).
    pub fn to_spec(&self) -> AdapterSpec {
        let (factor, rank, kron) = match self.factorization {
            Factorization::Dense => (FactorKind::Dense, None, None),
            Factorization::Lora { rank } => (FactorKind::Lora, Some(rank), None),
            Factorization::Tucker { rank } => (FactorKind::Tucker, Some(rank), None),
            Factorization::Kronecker { factors, rank } => (FactorKind::Kronecker, Some(rank), Some(factors)),
            Factorization::Vera { rank } => (FactorKind::Vera, Some(rank), None),
        };
        let (projection, ratio, count) = match self.projection {
            Projection::Identity => (ProjectionKind::Identity, None, None),
            Projection::Shuffle => (ProjectionKind::Shuffle, None, None),
            Projection::Fastfood { ratio } => (ProjectionKind::Fastfood, Some(ratio), None),
            Projection::Fourier { count } => (ProjectionKind::Fourier, None, Some(count)),
        };
        AdapterSpec {
            fold: Some(self.fold),
            groups: self.groups,
            order: Some(self.order),
            factor: Some(factor),
            rank,
            kron,
            projection: Some(projection),
            ratio,
            scale: Some(self.scale),
            seed: Some(self.seed),
            count,
        }
    }
}

/// A field enum named on the command line and in files: every value with its name and a one-line
/// summary (each family's summary lives in its own file). `Display` writes the name, `FromStr`
/// reads it (anything else is an error naming the field and the accepted values).
pub trait Named: Copy + Sized + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The name as flags and files spell it.
    fn name(self) -> &'static str;
    /// One line for `--help`.
    fn summary(self) -> &'static str;
}

macro_rules! named_enum {
    ($ty:ident, $field:literal, $($variant:ident => $name:literal, $summary:expr);+ $(;)?) => {
        impl Named for $ty {
            const ALL: &'static [$ty] = &[$($ty::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
            fn summary(self) -> &'static str {
                match self {
                    $($ty::$variant => $summary),+
                }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(Error::config(
                        $field,
                        s,
                        format!("must be one of {}", [$($name),+].join(", ")),
                    )),
                }
            }
        }
    };
}

named_enum!(
    Fold, "fold",
    Natural => "natural", "Whole consecutive layers with equal d_in, stacked along rows (G = L is weight-wise LoRA).";
    Square => "square", "G contiguous, nearly equal chunks of the whole update vector (may cross layers).";
);
named_enum!(
    FactorKind, "factor",
    Dense => "dense", crate::factor::dense::SUMMARY;
    Lora => "lora", crate::factor::lora::SUMMARY;
    Tucker => "tucker", crate::factor::tucker::SUMMARY;
    Kronecker => "kronecker", crate::factor::kronecker::SUMMARY;
    Vera => "vera", crate::factor::vera::SUMMARY;
);
named_enum!(
    ProjectionKind, "projection",
    Identity => "identity", crate::projection::IDENTITY_SUMMARY;
    Shuffle => "shuffle", crate::projection::shuffle::SUMMARY;
    Fastfood => "fastfood", crate::projection::fastfood::SUMMARY;
    Fourier => "fourier", crate::projection::fourier::SUMMARY;
);

impl AdapterSpec {
    /// The `plan`/`train` flags that reproduce the shape of this spec (`--fold square --groups 4
    /// --order 3 --factor tucker --rank 4 --ratio 0.01`; `--count` implies the fourier projection,
    /// `--ratio` below 1 fastfood; scale and seed are left out).
    pub fn flags(&self) -> String {
        let mut v = Vec::new();
        let mut push = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push(format!("--{k} {val}"));
            }
        };
        push("fold", self.fold.map(|f| f.to_string()));
        push("groups", self.groups.map(|g| g.to_string()));
        push("order", self.order.map(|m| m.to_string()));
        push("factor", self.factor.map(|f| f.to_string()));
        push("kron", self.kron.map(|k| k.to_string()));
        push("rank", self.rank.map(|r| r.to_string()));
        push("ratio", self.ratio.map(|r| r.to_string()));
        push("count", self.count.map(|n| n.to_string()));
        v.join(" ")
    }
}

impl AdapterConfig {
    /// The one short name of a config, used for default run folders (`natural-gL-m2-lora-r8`,
    /// `square-g12-m3-tucker-r5-ff0.01`, `natural-gL-m2-vera-r256`, `natural-gL-m1-dense-fourier1000`).
    pub fn slug(&self) -> String {
        let g = self.groups.map_or("L".to_string(), |g| g.to_string());
        let f = match self.factorization {
            Factorization::Dense => "dense".to_string(),
            Factorization::Lora { rank } => format!("lora-r{rank}"),
            Factorization::Tucker { rank } => format!("tucker-r{rank}"),
            Factorization::Kronecker { factors, rank } => format!("kron{factors}-r{rank}"),
            Factorization::Vera { rank } => format!("vera-r{rank}"),
        };
        let p = match self.projection {
            Projection::Identity => String::new(),
            Projection::Shuffle => "-shuffle".into(),
            Projection::Fastfood { ratio } => format!("-ff{ratio}"),
            Projection::Fourier { count } => format!("-fourier{count}"),
        };
        format!("{}-g{g}-m{}-{f}{p}", self.fold, self.order)
    }

    /// One line with every setting, `groups` being the planned number of groups
    /// (`fold=square groups=12 order=3 factor=tucker rank=5 projection=identity scale=1 seed=0`).
    pub fn describe(&self, groups: usize) -> String {
        let factor = match self.factorization {
            Factorization::Dense => "dense".to_string(),
            Factorization::Lora { rank } => format!("lora rank={rank}"),
            Factorization::Tucker { rank } => format!("tucker rank={rank}"),
            Factorization::Kronecker { factors, rank } => format!("kronecker K={factors} rank={rank}"),
            Factorization::Vera { rank } => format!("vera rank={rank}"),
        };
        let projection = match self.projection {
            Projection::Identity => "identity".to_string(),
            Projection::Shuffle => "shuffle".to_string(),
            Projection::Fastfood { ratio } => format!("fastfood ratio={ratio}"),
            Projection::Fourier { count } => format!("fourier count={count}"),
        };
        format!(
            "fold={} groups={groups} order={} factor={factor} projection={projection} scale={} seed={}",
            self.fold, self.order, self.scale, self.seed
        )
    }

    /// The plot series (family) of a config: `lora` (natural fold), `square2d`, `tucker-m<M>`,
    /// `kron-k<K>`, `dense`, `full-ft` (dense without a shrinking projection), `vera`, `fourierft`;
    /// `+fastfood` / `+shuffle` appended for those projections.
    pub fn family(&self) -> String {
        let ff = matches!(self.projection, Projection::Fastfood { .. });
        let mut name = match self.factorization {
            Factorization::Dense if matches!(self.projection, Projection::Fourier { .. }) => "fourierft".to_string(),
            Factorization::Dense if !ff => "full-ft".to_string(),
            Factorization::Dense => "dense".to_string(),
            Factorization::Lora { .. } if self.fold == Fold::Natural => "lora".to_string(),
            Factorization::Lora { .. } => "square2d".to_string(),
            Factorization::Tucker { .. } => format!("tucker-m{}", self.order),
            Factorization::Kronecker { factors, .. } => format!("kron-k{factors}"),
            Factorization::Vera { .. } => "vera".to_string(),
        };
        if ff {
            name.push_str("+fastfood");
        }
        if self.projection == Projection::Shuffle {
            name.push_str("+shuffle");
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AdapterSpec {
        AdapterSpec::default()
    }

    #[test]
    fn defaults_are_weight_wise_lora_rank_8() {
        let c = spec().resolve().unwrap();
        assert_eq!(c.fold, Fold::Natural);
        assert_eq!(c.groups, None);
        assert_eq!(c.order, 2);
        assert_eq!(c.factorization, Factorization::Lora { rank: 8 });
        assert_eq!(c.projection, Projection::Identity);
    }

    #[test]
    fn ratio_below_one_implies_fastfood_and_needs_square() {
        let s = AdapterSpec { ratio: Some(0.01), fold: Some(Fold::Square), ..spec() };
        assert_eq!(s.resolve().unwrap().projection, Projection::Fastfood { ratio: 0.01 });
        let s = AdapterSpec { ratio: Some(0.01), ..spec() };
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("`ratio` = 0.01") && e.contains("fold = square"), "{e}");
    }

    #[test]
    fn contradictions_name_field_value_rule() {
        let cases: Vec<(AdapterSpec, &str)> = vec![
            (
                AdapterSpec { factor: Some(FactorKind::Lora), order: Some(3), fold: Some(Fold::Square), ..spec() },
                "`order` = 3",
            ),
            (AdapterSpec { factor: Some(FactorKind::Tucker), order: Some(2), ..spec() }, "`order` = 2"),
            (AdapterSpec { factor: Some(FactorKind::Dense), rank: Some(4), ..spec() }, "`rank` = 4"),
            (AdapterSpec { factor: Some(FactorKind::Lora), kron: Some(2), ..spec() }, "`kron` = 2"),
            (AdapterSpec { factor: Some(FactorKind::Kronecker), kron: Some(9), ..spec() }, "`kron` = 9"),
            (AdapterSpec { order: Some(9), factor: Some(FactorKind::Dense), ..spec() }, "`order` = 9"),
            (AdapterSpec { rank: Some(0), ..spec() }, "`rank` = 0"),
            (AdapterSpec { groups: Some(0), ..spec() }, "`groups` = 0"),
            (AdapterSpec { ratio: Some(0.0), ..spec() }, "`ratio` = 0"),
            (
                AdapterSpec {
                    ratio: Some(0.5),
                    projection: Some(ProjectionKind::Shuffle),
                    fold: Some(Fold::Square),
                    ..spec()
                },
                "`ratio` = 0.5",
            ),
            (AdapterSpec { scale: Some(f64::INFINITY), ..spec() }, "`scale` = inf"),
            (AdapterSpec { scale: Some(-1e39), ..spec() }, "`scale` = -1000000000000000000000000000000000000000"),
            (AdapterSpec { factor: Some(FactorKind::Tucker), fold: Some(Fold::Natural), ..spec() }, "`order` = 3"),
        ];
        for (s, want) in cases {
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: got `{e}`, want `{want}`");
        }
    }

    /// Default run folders and the study's folders are named by `slug`: these names may not change.
    #[test]
    fn slugs_of_the_existing_families_are_unchanged() {
        let sq = |g, m, f, r| AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(g),
            order: Some(m),
            factor: Some(f),
            rank: r,
            ..spec()
        };
        let cases = [
            (spec(), "natural-gL-m2-lora-r8"),
            (AdapterSpec { rank: Some(1), groups: Some(2), ..spec() }, "natural-g2-m2-lora-r1"),
            (sq(12, 3, FactorKind::Tucker, Some(5)), "square-g12-m3-tucker-r5"),
            (
                AdapterSpec { ratio: Some(0.01), ..sq(4, 3, FactorKind::Tucker, Some(4)) },
                "square-g4-m3-tucker-r4-ff0.01",
            ),
            (AdapterSpec { kron: Some(2), ..sq(1, 2, FactorKind::Kronecker, Some(4)) }, "square-g1-m2-kron2-r4"),
            (AdapterSpec { ratio: Some(0.001), ..sq(1, 1, FactorKind::Dense, None) }, "square-g1-m1-dense-ff0.001"),
            (
                AdapterSpec { projection: Some(ProjectionKind::Shuffle), ..sq(2, 2, FactorKind::Lora, Some(2)) },
                "square-g2-m2-lora-r2-shuffle",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.resolve().unwrap().slug(), want);
        }
    }

    #[test]
    fn merge_prefers_the_override_and_round_trips() {
        let file = AdapterSpec { rank: Some(4), fold: Some(Fold::Square), ..spec() };
        let flags = AdapterSpec { rank: Some(2), ..spec() };
        let m = file.merge(&flags);
        assert_eq!(m.rank, Some(2));
        assert_eq!(m.fold, Some(Fold::Square));
        let c = m.resolve().unwrap();
        assert_eq!(c.to_spec().resolve().unwrap(), c);
    }
}
