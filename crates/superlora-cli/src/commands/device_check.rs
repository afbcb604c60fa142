//! `superlora device-check` (hidden): ΔW of every adapter family, and the gradient that reaches
//! its trainable tensors, computed on `--device` and on `--against` (the CPU oracle by default)
//! from the same non-zero parameters; prints one row per family with the relative difference
//! (max |a − b| / max |b|) and exits 1 when any exceeds `--tol`. tools/device-check.sh runs it on
//! an accelerator machine as `--device cuda`; on the CPU (`--device cpu`) both sides run the same
//! kernels, which is what the tests check.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;
use superlora_core::{AdapterSpec, FactorKind, LayerShape, ProjectionKind, SuperLora};

use crate::flags::DeviceArg;

/// `superlora device-check`.
#[derive(Debug, Args)]
pub struct DeviceCheckArgs {
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
    /// The reference device.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub against: DeviceArg,
    /// Largest relative difference accepted, for ΔW and for the gradients.
    #[arg(long, default_value_t = 1e-5)]
    pub tol: f64,
    /// One JSON object per family instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One family's comparison.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The family.
    pub family: String,
    /// Trainable parameters.
    pub params: usize,
    /// max over layers of max |ΔW_dev − ΔW_ref| / max |ΔW_ref|.
    pub delta_rel: f64,
    /// The same for the gradients of ⟨ΔW, R⟩ (fixed R) with respect to every trainable tensor.
    pub grad_rel: f64,
    /// Milliseconds for ΔW + backward on the device (after one untimed run).
    pub device_ms: f64,
}

/// The weights adapted: MiniLM-sized (384 wide) query/value and feed-forward shapes, six layers.
pub fn shapes() -> Vec<LayerShape> {
    let mut v = Vec::new();
    for l in 0..6 {
        for (what, rows, cols) in [("query", 384, 384), ("value", 384, 384), ("ffn.up", 1536, 384)] {
            v.push(LayerShape { name: format!("layer{l}.{what}"), rows, cols });
        }
    }
    v
}

/// Every factorization and projection the adapter has, each at least once.
pub fn families() -> Vec<(&'static str, AdapterSpec)> {
    let sq = super::bench::square;
    vec![
        ("lora r=8 (weight-wise)", AdapterSpec { rank: Some(8), ..Default::default() }),
        ("dense M=1 (full ΔW)", AdapterSpec { factor: Some(FactorKind::Dense), ..Default::default() }),
        ("square M=2 G=4 lora r=8", sq(4, 2, FactorKind::Lora, Some(8))),
        ("tucker M=3 G=6 r=5", sq(6, 3, FactorKind::Tucker, Some(5))),
        ("kronecker K=2 r=4", AdapterSpec { kron: Some(2), ..sq(1, 2, FactorKind::Kronecker, Some(4)) }),
        ("vera r=64", AdapterSpec { factor: Some(FactorKind::Vera), rank: Some(64), ..Default::default() }),
        (
            "lora r=4 + shuffle",
            AdapterSpec { projection: Some(ProjectionKind::Shuffle), ..sq(3, 2, FactorKind::Lora, Some(4)) },
        ),
        (
            "dense M=1 fastfood ρ=0.01",
            AdapterSpec {
                ratio: Some(0.01),
                projection: Some(ProjectionKind::Fastfood),
                ..sq(1, 1, FactorKind::Dense, None)
            },
        ),
        ("fourier n=100", AdapterSpec { count: Some(100), ..Default::default() }),
    ]
}

/// A fixed pseudo-random tensor (no RNG state; equal on every device): entries in [−a, a].
fn pattern(shape: &[usize], salt: usize, a: f64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i as f64 + 1.0) * 12.9898 + salt as f64 * 78.233).sin() * 43_758.545_3;
            (a * (2.0 * (x - x.floor()) - 1.0)) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// The adapter of `spec` on `device`, every trainable tensor set to a fixed non-zero pattern
/// (at initialisation ΔW is zero, which would compare nothing).
fn adapter(spec: &AdapterSpec, device: &Device) -> Result<SuperLora> {
    let config = spec.resolve()?;
    let a = SuperLora::from_shapes(&shapes(), &config, DType::F32, device)?;
    for (i, (name, var)) in a.named_vars().into_iter().enumerate() {
        a.set(&name, &pattern(var.dims(), i, 0.05, device)?)?;
    }
    Ok(a)
}

/// ΔW per layer and the gradient of Σ_l ⟨ΔW_l, R_l⟩ per trainable tensor, computed on `device`
/// and returned on the CPU.
fn run(spec: &AdapterSpec, device: &Device) -> Result<(Vec<Tensor>, Vec<Tensor>, usize)> {
    let a = adapter(spec, device)?;
    let deltas = a.delta_weights()?;
    let mut loss: Option<Tensor> = None;
    for (l, d) in deltas.iter().enumerate() {
        let term = (d * pattern(d.dims(), 1000 + l, 1.0, device)?)?.sum_all()?;
        loss = Some(match loss {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    let loss = loss.context("the adapter adapts no layer")?;
    let grads = loss.backward()?;
    let mut g = Vec::new();
    for (name, var) in a.named_vars() {
        let t = grads.get(var.as_tensor()).with_context(|| format!("{name} received no gradient"))?;
        g.push(t.to_device(&Device::Cpu)?);
    }
    let deltas = deltas.iter().map(|d| d.to_device(&Device::Cpu)).collect::<candle_core::Result<_>>()?;
    Ok((deltas, g, a.num_trainable()))
}

/// max |a − b| / max |b| over a list of tensor pairs (each pair normalised by its own scale).
fn rel(a: &[Tensor], b: &[Tensor]) -> Result<f64> {
    if a.len() != b.len() {
        bail!("{} tensors against {}", a.len(), b.len());
    }
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(b) {
        let x: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let y: Vec<f32> = y.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        if x.len() != y.len() {
            bail!("{} values against {}", x.len(), y.len());
        }
        let scale = y.iter().fold(0f64, |m, v| m.max(f64::from(v.abs()))).max(f64::MIN_POSITIVE);
        for (p, q) in x.iter().zip(&y) {
            let d = f64::from((p - q).abs());
            // A NaN on either side is an infinite difference.
            worst = worst.max(if d.is_nan() { f64::INFINITY } else { d / scale });
        }
    }
    Ok(worst)
}

/// Compares every family on `device` against `reference`.
pub fn compare(device: &Device, reference: &Device) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (family, spec) in families() {
        let (d_ref, g_ref, params) = run(&spec, reference).with_context(|| format!("{family} on the reference"))?;
        run(&spec, device).with_context(|| format!("{family} on the device"))?;
        let t = std::time::Instant::now();
        let (d_dev, g_dev, _) = run(&spec, device).with_context(|| format!("{family} on the device"))?;
        device.synchronize()?;
        let device_ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(Row {
            family: family.into(),
            params,
            delta_rel: rel(&d_dev, &d_ref)?,
            grad_rel: rel(&g_dev, &g_ref)?,
            device_ms,
        });
    }
    Ok(rows)
}

/// Runs the command.
pub fn run_command(args: &DeviceCheckArgs) -> Result<()> {
    let device = args.device.open()?;
    let reference = args.against.open()?;
    let rows = compare(&device, &reference)?;
    if !args.json {
        println!(
            "ΔW and gradients on {} vs {} (relative: max |a - b| / max |b|; tolerance {:e})",
            args.device.device, args.against, args.tol
        );
        println!("{:<28} {:>9} {:>12} {:>12} {:>10}", "family", "params", "ΔW rel", "grad rel", "ms");
    }
    let mut failed = Vec::new();
    for r in &rows {
        if args.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{:<28} {:>9} {:>12.3e} {:>12.3e} {:>10.1}",
                r.family, r.params, r.delta_rel, r.grad_rel, r.device_ms
            );
        }
        // NaN-safe: a NaN difference fails.
        if !(r.delta_rel <= args.tol && r.grad_rel <= args.tol) {
            failed.push(r.family.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} famil{} over the tolerance {:e}: {}",
            failed.len(),
            if failed.len() == 1 { "y" } else { "ies" },
            args.tol,
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deltas_compared_are_not_zero() {
        // A check of zeros against zeros would pass on any device. (The CPU-vs-CPU run of every
        // family is tests/cli_device.rs.)
        for (family, spec) in families() {
            let (deltas, grads, _) = run(&spec, &Device::Cpu).unwrap();
            for d in deltas.iter().chain(&grads) {
                let m = d.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(m > 1e-6, "{family}: a ΔW or gradient is zero");
            }
        }
    }

    #[test]
    fn a_difference_is_measured() {
        let a = Tensor::new(&[1f32, 2.0, 4.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 2.0, 4.004], &Device::Cpu).unwrap();
        let r = rel(std::slice::from_ref(&a), &[b]).unwrap();
        assert!((r - 0.004 / 4.004).abs() < 1e-6, "{r}");
        let nan = Tensor::new(&[f32::NAN, 2.0, 4.0], &Device::Cpu).unwrap();
        assert!(rel(&[nan], &[a]).unwrap().is_infinite());
    }
}
