//! Flags and value parsers that several commands share: the adapter settings, the weight
//! source of `plan`, presets, schedules, and the number parsers behind `value_parser`.

use std::path::PathBuf;

use clap::Args;
use std::str::FromStr;

use superlora_core::{FactorKind, Fold, Named, ProjectionKind};

/// Where the adapted weights come from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ShapeSource {
    /// Adapted weight shapes as OUTxIN[*COUNT], comma-separated, in model order,
    /// e.g. `768x768*24,3072x768*12`.
    #[arg(long, value_name = "LIST")]
    pub shapes: Option<String>,
    /// A model: a DINOv2 .onnx or a BERT folder (its linear layers, exactly as `train` adapts
    /// them), or any .safetensors file or folder of them (its 2-D `.weight` tensors, headers only).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

/// Adapter settings; every one is optional and overrides the same key of --config.
#[derive(Debug, Args, Default)]
pub struct AdapterArgs {
    /// TOML file with adapter settings: keys fold, groups, order, factor, rank, kron, projection,
    /// ratio, scale, seed, count (the adapter flags; other flags are not read from it). Flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How the update vector is cut into groups: whole layers stacked (natural) or equal chunks
    /// that may cross layers (square).
    #[arg(long, value_parser = named::<Fold>())]
    pub fold: Option<Fold>,
    /// Number of groups G [default: one per layer (natural), 1 (square)].
    #[arg(long, value_name = "G")]
    pub groups: Option<usize>,
    /// Tensor order M of each folded group, 1..=8 [default: 1 dense, 2 lora/kronecker, 3 tucker].
    #[arg(long, value_name = "M")]
    pub order: Option<usize>,
    /// How each group is produced [default: lora].
    #[arg(long, value_parser = named::<FactorKind>())]
    pub factor: Option<FactorKind>,
    /// Rank r of lora / tucker / Kronecker factors / vera [default: 8].
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// Number of Kronecker factors K (>= 2 selects --factor kronecker) [default: 2 with kronecker].
    #[arg(long, value_name = "K")]
    pub kron: Option<usize>,
    /// Fixed projection from n_g values to N_g entries [default: identity; fastfood when --ratio < 1].
    #[arg(long, value_parser = named::<ProjectionKind>())]
    pub projection: Option<ProjectionKind>,
    /// Projection ratio rho in (0, 1]: the factorization produces ceil(rho * N_g) values [default: 1].
    #[arg(long, value_name = "RHO")]
    pub ratio: Option<f64>,
    /// FourierFT's spectral coefficients per adapted weight (implies --projection fourier; at most
    /// d_out * d_in of every weight).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Output scale alpha: dW = alpha * update [default: 1; 150 with --projection fourier].
    #[arg(long, value_name = "ALPHA", allow_negative_numbers = true)]
    pub scale: Option<f64>,
    /// Seed of every random initial value and fixed projection [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl AdapterArgs {
    /// Whether any flag that shapes the adapter (or `--config`) was given; `--scale` and `--seed`
    /// do not change which parameters exist, so they are not counted.
    pub fn shapes_adapter(&self) -> bool {
        self.config.is_some()
            || self.fold.is_some()
            || self.groups.is_some()
            || self.order.is_some()
            || self.factor.is_some()
            || self.rank.is_some()
            || self.kron.is_some()
            || self.projection.is_some()
            || self.ratio.is_some()
            || self.count.is_some()
    }
}

/// Built-in task set-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// DINOv2 ViT-S/14 on Fashion-MNIST at 56 px.
    VitFmnist,
    /// all-MiniLM-L6-v2 on Rotten Tomatoes (fresh vs rotten).
    MinilmRt,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Warm-up then constant.
    Constant,
    /// Warm-up then linear decay to 0.
    Linear,
    /// Warm-up then cosine decay to 0.
    Cosine,
}

/// The value parser of a core field enum (`--fold`, `--factor`, `--projection`): the names and
/// one-line summaries come from the core ([`Named`]), so a new family needs no change here.
pub fn named<T: Named + FromStr<Err = superlora_core::Error> + Send + Sync>()
-> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(T::ALL.iter().map(|v| PossibleValue::new(v.name()).help(v.summary())))
        .try_map(|s| s.parse::<T>())
}

// Value parsers: each refuses NaN, infinities and out-of-range values with a message that says
// what to give.

/// `s` as a number for which `ok` holds (NaN fails every comparison, so it is refused too), else
/// an error saying what `s` is not and what to give.
pub(crate) fn number_where(s: &str, ok: impl Fn(f64) -> bool, not: &str, give: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && ok(*v)).ok_or_else(|| format!("`{s}` {not}: give {give}"))
}

/// `s` as a whole number in `range`, else an error saying what `s` is not and what to give.
pub(crate) fn count_in(s: &str, range: std::ops::RangeInclusive<usize>, not: &str) -> Result<usize, String> {
    s.parse::<usize>().ok().filter(|v| range.contains(v)).ok_or_else(|| {
        let give = if *range.end() == usize::MAX {
            format!("a whole number ≥ {}", range.start())
        } else {
            format!("a whole number in {}..={}", range.start(), range.end())
        };
        format!("`{s}` {not}: give {give}")
    })
}

/// A tolerance: a finite number ≥ 0 (NaN would switch the check off).
pub(crate) fn tolerance(s: &str) -> Result<f64, String> {
    number_where(s, |v| v >= 0.0, "is not a tolerance", "a finite number ≥ 0, e.g. 1e-4")
}

/// A finite number ≥ 0 (a weight decay; NaN would poison every parameter).
pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    number_where(s, |v| v >= 0.0, "is not allowed here", "a finite number ≥ 0")
}

/// A finite number > 0.
pub(crate) fn positive(s: &str) -> Result<f64, String> {
    number_where(s, |v| v > 0.0, "is not allowed here", "a finite number > 0")
}

/// A count of at least 1 (0 steps, examples or tokens would do nothing, or divide by zero).
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    count_in(s, 1..=usize::MAX, "is not a count")
}

/// [`at_least_one`] for u64 counts.
pub(crate) fn at_least_one_u64(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|v| v as u64)
}

/// A probability in [0, 1) (a label dropout of 1 would never train a real label).
pub(crate) fn dropout_probability(s: &str) -> Result<f64, String> {
    number_where(s, |v| (0.0..1.0).contains(&v), "is not a dropout probability", "a number in [0, 1), e.g. 0.1")
}

/// A number in [0, 1] (DDIM's η).
pub(crate) fn unit_interval(s: &str) -> Result<f64, String> {
    number_where(s, |v| (0.0..=1.0).contains(&v), "is not in [0, 1]", "e.g. 0 (deterministic) or 1 (DDPM-like)")
}

/// A classifier-free guidance scale: finite, in [-100, 100] (published scales stay below ~20;
/// far beyond, ε overflows f32).
pub(crate) fn guidance_scale(s: &str) -> Result<f64, String> {
    number_where(s, |v| v.abs() <= 100.0, "is not a guidance scale", "a finite number in [-100, 100], e.g. 2")
}

/// Tokens per text for `bench`: 1..=512 (MiniLM's position table).
pub(crate) fn sequence_length(s: &str) -> Result<usize, String> {
    count_in(s, 1..=512, "is not a sequence length for MiniLM")
}

/// Examples per batch: 1..=65536 (memory; commands also check that the model's activations fit).
pub(crate) fn batch_count(s: &str) -> Result<usize, String> {
    count_in(s, 1..=65_536, "is not a batch size")
}

/// Generated images per class: 1..=10000 (they are all held in memory).
pub(crate) fn per_class_count(s: &str) -> Result<usize, String> {
    count_in(s, 1..=10_000, "is not a number of images per class")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_parsers_refuse_nan_infinity_and_out_of_range() {
        assert_eq!(tolerance("1e-4"), Ok(1e-4));
        for bad in ["NaN", "inf", "-1", "x"] {
            assert!(tolerance(bad).unwrap_err().contains("not a tolerance"), "{bad}");
            assert!(non_negative(bad).is_err() && positive(bad).is_err(), "{bad}");
        }
        assert!(positive("0").is_err() && non_negative("0").is_ok());
        assert_eq!(at_least_one("0").unwrap_err(), "`0` is not a count: give a whole number ≥ 1");
        assert_eq!(batch_count("65537").unwrap_err(), "`65537` is not a batch size: give a whole number in 1..=65536");
        assert!(dropout_probability("1").is_err() && dropout_probability("0").is_ok());
        assert!(guidance_scale("1e30").is_err() && guidance_scale("-2").is_ok());
    }
}

/// The `--device` flag of the commands that run a model (flattened into their arguments).
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct DeviceFlag {
    /// Where the model, the adapter and every batch live: cpu, cuda (GPU 0) or cuda:N. cuda needs
    /// a binary built with scripts/build-cuda.sh; nothing falls back to the CPU.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceArg,
}

impl DeviceFlag {
    /// Opens the device (see [`DeviceArg::open`]).
    pub fn open(self) -> anyhow::Result<candle_core::Device> {
        self.device.open()
    }

    /// Refuses data parallel (`--workers` above 1) off the CPU: its workers are CPU threads.
    pub fn check_workers(self, workers: usize) -> anyhow::Result<()> {
        if workers > 1 && self.device != DeviceArg::Cpu {
            return Err(crate::settings::InputError(format!(
                "--workers {workers}: data parallel runs CPU workers; with --device {} leave it out",
                self.device
            ))
            .into());
        }
        Ok(())
    }
}

/// `--device`: where the model, the adapter and every batch live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// CUDA GPU number N (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// What `--device cuda` says in a binary built without CUDA.
pub const NO_CUDA: &str = "this superlora binary was built without CUDA: build one with scripts/build-cuda.sh \
     (cargo build --release --features cuda), or use --device cpu";

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let give = "give cpu, cuda or cuda:N (N the GPU's number, e.g. cuda:0)";
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!("'{s}' is not a device: {give}")),
            },
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceArg {
    /// Opens the device. `cuda` in a binary built without the `cuda` feature is an input error
    /// (exit 2) naming the build script; a CUDA device that cannot be opened is an error, never a
    /// silent fall-back to the CPU.
    pub fn open(self) -> anyhow::Result<candle_core::Device> {
        match self {
            DeviceArg::Cpu => Ok(candle_core::Device::Cpu),
            DeviceArg::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> anyhow::Result<candle_core::Device> {
    use anyhow::Context;
    candle_core::Device::new_cuda(n).with_context(|| format!("opening CUDA device {n} (--device cuda:{n})"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_n: usize) -> anyhow::Result<candle_core::Device> {
    Err(crate::settings::InputError(NO_CUDA.into()).into())
}

#[cfg(test)]
mod device_tests {
    use super::*;

    #[test]
    fn device_values_parse() {
        assert_eq!("cpu".parse::<DeviceArg>(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse::<DeviceArg>(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceArg>(), Ok(DeviceArg::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "metal"] {
            let e = bad.parse::<DeviceArg>().unwrap_err();
            assert!(e.contains("cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        assert_eq!(DeviceArg::Cuda(2).to_string(), "cuda:2");
        assert!(DeviceArg::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_input_error_naming_the_build_script() {
        let e = DeviceArg::Cuda(0).open().unwrap_err();
        assert!(e.downcast_ref::<crate::settings::InputError>().is_some());
        assert!(e.to_string().contains("scripts/build-cuda.sh"), "{e}");
    }
}
