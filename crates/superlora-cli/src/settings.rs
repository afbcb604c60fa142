//! Arguments resolved into checked settings: shapes parsed, config file merged under flags,
//! adapter config validated. Errors name the flag or file and say how to fix it.

use std::path::Path;

use anyhow::{Context, Result};
use superlora_core::{AdapterConfig, AdapterSpec, LayerShape};
use superlora_io::{TargetPattern, read_model_headers, select_targets};

use crate::flags::{AdapterArgs, ShapeSource};

/// An error in what the user gave (flags, files): the binary exits with code 2.
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// `Err(InputError(msg))`.
macro_rules! input_bail {
    ($($t:tt)*) => { return Err(InputError(format!($($t)*)).into()) };
}

/// Parses `OUTxIN[*COUNT]` items separated by commas.
pub fn parse_shapes(list: &str) -> Result<Vec<LayerShape>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            InputError(format!(
                "--shapes: `{item}` is not OUTxIN or OUTxIN*COUNT with whole numbers ≥ 1 (e.g. 768x768*24)"
            ))
        };
        let (dims, count) = match item.split_once('*') {
            Some((d, c)) => (d, c.trim().parse::<usize>().ok().filter(|c| *c > 0).ok_or_else(bad)?),
            None => (item, 1),
        };
        let (rows, cols) = dims.split_once(['x', 'X']).ok_or_else(bad)?;
        let rows: usize = rows.trim().parse().ok().filter(|r| *r > 0).ok_or_else(bad)?;
        let cols: usize = cols.trim().parse().ok().filter(|c| *c > 0).ok_or_else(bad)?;
        if out.len() + count > 1_000_000 {
            input_bail!("--shapes: more than a million weights; is the repeat count in `{item}` right?");
        }
        for _ in 0..count {
            out.push(LayerShape::new(format!("layer{}", out.len()), rows, cols));
        }
    }
    if out.is_empty() {
        input_bail!("--shapes is empty; give at least one OUTxIN (e.g. 768x768*24)");
    }
    Ok(out)
}

/// The adapted weights from --shapes or --model + targets.
pub fn resolve_shapes(source: &ShapeSource, targets: Option<&str>, regex: Option<&str>) -> Result<Vec<LayerShape>> {
    match (&source.shapes, &source.model) {
        (Some(list), None) => {
            if targets.is_some() || regex.is_some() {
                input_bail!(
                    "--targets/--targets-regex select weights of --model; with --shapes list only the adapted shapes"
                );
            }
            parse_shapes(list)
        }
        (None, Some(path)) => {
            let pattern = match (targets, regex) {
                (_, Some(re)) => TargetPattern::regex(re)?,
                (Some(names), None) => TargetPattern::names(names)?,
                (None, None) => TargetPattern::names("query,value")?,
            };
            if let Some(linears) = trainable_linears(path)? {
                return superlora_models::adapt::select(&linears, &pattern)
                    .with_context(|| format!("choosing targets among the linear layers of {}", path.display()));
            }
            let tensors = read_model_headers(path).with_context(|| format!("reading --model {}", path.display()))?;
            Ok(select_targets(&tensors, &pattern).with_context(|| format!("choosing targets in {}", path.display()))?)
        }
        _ => input_bail!("give exactly one of --shapes or --model"),
    }
}

/// The linear layers `train` can adapt, for a model this program trains: a DINOv2 `.onnx` (converted
/// once, as `train` does), or a Hugging Face folder (or a `.safetensors` file with its
/// `config.json` beside it) whose `model_type` is one `train` supports (bert, roberta, distilbert,
/// vit, dinov2). None for any other model, whose 2-D `.weight` tensors are then read from the
/// headers — so `plan` and `train` count the same weights (headers alone would also offer
/// embedding tables and BERT's pooler).
fn trainable_linears(path: &Path) -> Result<Option<Vec<superlora_models::adapt::LinearInfo>>> {
    let cpu = candle_core::Device::Cpu;
    if path.extension().is_some_and(|e| e == "onnx") {
        let weights = crate::runspec::vit_weights(path)?;
        let vit = superlora_models::vit::Vit::load(&weights, &cpu)
            .with_context(|| format!("reading --model {}", path.display()))?;
        return Ok(Some(vit.linears()));
    }
    let dir = crate::runspec::model_dir(path);
    if !dir.join("config.json").is_file() {
        return Ok(None);
    }
    // A supported model (by its config's `model_type`) must load; any other model with a config
    // (e.g. a decoder-only one) is read from its headers.
    let Ok(kind) = superlora_models::model_type(&dir) else { return Ok(None) };
    let context = || format!("reading --model {} as a {kind} model", path.display());
    Ok(match kind.as_str() {
        k if superlora_models::hf::TEXT.contains(&k) => {
            Some(superlora_models::load_text_encoder(path, &cpu).with_context(context)?.linears())
        }
        k if superlora_models::hf::IMAGE.contains(&k) => {
            Some(superlora_models::load_image_encoder(path, &cpu).with_context(context)?.linears())
        }
        _ => None,
    })
}

/// Reads a TOML adapter-settings file.
pub fn read_config_file(path: &Path) -> Result<AdapterSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --config {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "--config {}: not a valid adapter config (keys: fold, groups, order, factor, rank, kron, projection, ratio, scale, seed, count)",
            path.display()
        )
    })
}

/// The adapter config: file (if any) overridden by flags, then validated.
pub fn resolve_adapter(args: &AdapterArgs) -> Result<AdapterConfig> {
    let file = match &args.config {
        Some(p) => read_config_file(p)?,
        None => AdapterSpec::default(),
    };
    let flags = AdapterSpec {
        fold: args.fold,
        groups: args.groups,
        order: args.order,
        factor: args.factor,
        rank: args.rank,
        kron: args.kron,
        projection: args.projection,
        ratio: args.ratio,
        scale: args.scale,
        seed: args.seed,
        count: args.count,
    };
    let merged = file.merge(&flags);
    merged.resolve().context("invalid adapter settings (flag or --config key)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_with_repeats() {
        let s = parse_shapes("768x768*24, 3072x768*12").unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!((s[24].rows, s[24].cols), (3072, 768));
        assert_eq!(s[35].name, "layer35");
        for bad in ["", "768", "768x", "0x5", "5x5*0", "5x5*x", "axb"] {
            assert!(parse_shapes(bad).is_err(), "{bad}");
        }
    }
}
