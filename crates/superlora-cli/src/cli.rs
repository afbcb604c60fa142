//! The command line: the verbs and where each one's arguments live (`commands/<verb>.rs`).

use clap::{Parser, Subcommand};

use crate::commands::{
    bench, device_check, diffusion, eval, export, generate, import, merge, plan, plot, predict, sweep, train,
};

/// Fine-tune pretrained transformers with SuperLoRA and every LoRA variant it contains.
#[derive(Debug, Parser)]
#[command(name = "superlora", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve an adapter config over a model's weights and print groups, shapes and parameter counts.
    #[command(long_about = plan::PLAN_ABOUT, after_help = plan::PLAN_EXAMPLES)]
    Plan(plan::PlanArgs),
    /// Fine-tune a pretrained model on a dataset with an adapter (or the head alone), evaluating
    /// and checkpointing as it goes.
    #[command(long_about = train::TRAIN_ABOUT, after_help = train::TRAIN_EXAMPLES)]
    Train(Box<train::TrainArgs>),
    /// Score a run (finished or interrupted: its latest checkpoint) or an adapter folder on a full
    /// split (test by default, or --split valid).
    Eval(eval::EvalArgs),
    /// Classify images (PNG/JPEG files) or texts with a saved adapter and print the class and the
    /// probabilities.
    Predict(predict::PredictArgs),
    /// Continue a text with a decoder LLM (a Llama .gguf or folder), optionally with an adapter,
    /// streaming the tokens; greedy unless --temperature / --top-p; --logprobs scores a text.
    Generate(generate::GenerateArgs),
    /// Write the base model's weights with W + ΔW in place (same names, same dtype, every other
    /// tensor untouched) and check that the merged model gives the same outputs; for a decoder LLM's
    /// adapter, a Hugging Face Llama folder (model.safetensors, config.json, tokenizer.json).
    Merge(merge::MergeArgs),
    /// Subtract an adapter's ΔW from merged weights (the inverse of `merge`) and report how close
    /// the result is to the base model.
    Unmerge(merge::UnmergeArgs),
    /// Export an adapter for other tools: Hugging Face PEFT LoRA (exact for weight-wise LoRA, best
    /// rank-k per layer otherwise) or the exact per-layer ΔW.
    Export(export::ExportArgs),
    /// Bring an adapter made elsewhere (Hugging Face PEFT LoRA) in as one of ours, so that eval,
    /// predict, merge and export work on it.
    #[command(long_about = import::IMPORT_ABOUT, after_help = import::IMPORT_EXAMPLES)]
    Import(import::ImportArgs),
    /// Run many training configs x seeds on one task from a TOML grid, in sequence and resumably,
    /// one results.csv row per finished run.
    #[command(long_about = sweep::SWEEP_ABOUT, after_help = sweep::SWEEP_EXAMPLE)]
    Sweep(sweep::SweepArgs),
    /// Plot test accuracy against adapter parameters from a sweep's results.csv (PNG + SVG) and
    /// write the Pareto table and the paper's two claims in Markdown.
    Plot(plot::PlotArgs),
    /// Measure training throughput: MiniLM on real review texts at a fixed batch and sequence
    /// length, LoRA r=8 on query+value as the reference, every config in its own process.
    Bench(bench::BenchArgs),
    /// Class-conditional diffusion (docs/DIFFUSION.md): pretrain a small diffusion transformer on MNIST,
    /// transfer it to Fashion-MNIST with a SuperLoRA adapter on its attention, sample and score.
    #[command(subcommand)]
    Diffusion(diffusion::DiffusionCommand),
    /// ΔW and gradients of every adapter family on --device against the CPU (tools/device-check.sh).
    #[command(hide = true)]
    DeviceCheck(device_check::DeviceCheckArgs),
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    /// Every command's long help, with its path (`["plan"]`, `["diffusion", "transfer"]`).
    fn helps() -> Vec<(String, String)> {
        fn walk(cmd: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
            out.push((path.clone(), cmd.render_long_help().to_string()));
            for sub in cmd.get_subcommands_mut() {
                let name = sub.get_name().to_string();
                if name != "help" {
                    walk(sub, format!("{path} {name}"), out);
                }
            }
        }
        let mut out = Vec::new();
        let mut cmd = Cli::command().term_width(200);
        cmd.build();
        walk(&mut cmd, "superlora".into(), &mut out);
        out
    }

    /// Splits a command line as a shell would for these examples (words, double quotes).
    fn words(line: &str) -> Vec<String> {
        let (mut out, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
        for c in line.chars() {
            match c {
                '"' => (quoted, any) = (!quoted, true),
                c if c.is_whitespace() && !quoted => {
                    if any || !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                c => word.push(c),
            }
        }
        if any || !word.is_empty() {
            out.push(word);
        }
        out
    }

    /// The `superlora ...` command lines of a help text, `\` continuations joined, comments cut.
    fn examples(help: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut open = false;
        for line in help.lines() {
            let code = line.split(" # ").next().unwrap_or(line).trim();
            if open {
                let last = out.last_mut().expect("a continued line follows a command");
                last.push(' ');
                last.push_str(code.trim_end_matches('\\'));
            } else if code.starts_with("superlora ") {
                out.push(code.trim_end_matches('\\').to_string());
            } else {
                continue;
            }
            open = code.ends_with('\\');
        }
        out
    }

    #[test]
    fn every_help_example_parses_and_fits_80_columns() {
        let mut seen = 0;
        for (path, help) in helps() {
            let mut in_examples = false;
            for line in help.lines() {
                in_examples |= line.starts_with("Example");
                if in_examples {
                    assert!(line.chars().count() <= 80, "`{path} --help`: example line over 80 columns: {line}");
                }
            }
            for ex in examples(&help) {
                let argv = words(&ex);
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("`{path} --help` example does not parse: {ex}\n{e}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 15, "only {seen} examples found: the extraction is broken");
    }

    #[test]
    fn example_extraction_joins_continuations() {
        let help = "Examples:\n  # a comment\n  superlora plan --shapes 8x8 \\\n    --rank 2\n  superlora plot r.csv   # note\n";
        assert_eq!(examples(help), ["superlora plan --shapes 8x8  --rank 2", "superlora plot r.csv"]);
        assert_eq!(words("superlora predict \"a b\" c"), ["superlora", "predict", "a b", "c"]);
    }
}
