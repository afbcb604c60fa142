//! Which weights an adapter targets.
//!
//! Candidates are the 2-D tensors named `<module path>.weight`. A name pattern matches a
//! candidate whose module path equals it or ends with `.` + pattern (a trailing `.weight` on the
//! pattern is ignored), so `query` matches `encoder.layer.0.attention.self.query.weight`. A regex
//! pattern must match the whole module path. A pattern that matches nothing is an error that
//! lists the closest candidate names. Matches come back in model order: names sorted with their
//! numeric parts compared as numbers (`layer.2` before `layer.10`), so files whose headers are
//! alphabetical still give the module-tree order of numbered blocks.

use std::cmp::Ordering;

use regex::Regex;
use superlora_core::LayerShape;

use crate::header::TensorInfo;
use crate::{Error, Result};

/// How targets are named.
#[derive(Clone, Debug)]
pub enum TargetPattern {
    /// Exact names or dotted suffixes (`query`, `attention.self.value`).
    Names(Vec<String>),
    /// One regex that must match a whole module path.
    Regex(Regex),
}

impl TargetPattern {
    /// Parses a comma-separated list of names.
    pub fn names(list: &str) -> Result<Self> {
        let names: Vec<String> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if names.is_empty() {
            return Err(Error::Targets("--targets is empty; give names such as `query,value`".into()));
        }
        Ok(TargetPattern::Names(names))
    }

    /// Compiles a full-match regex.
    pub fn regex(re: &str) -> Result<Self> {
        Regex::new(&format!("^(?:{re})$"))
            .map(TargetPattern::Regex)
            .map_err(|e| Error::Targets(format!("--targets-regex `{re}` is not a valid regex: {e}")))
    }

    /// Whether a module path (`encoder.layer.0.attention.self.query`) is one of these targets.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            TargetPattern::Names(names) => names.iter().any(|p| name_matches(module, p)),
            TargetPattern::Regex(re) => re.is_match(module),
        }
    }
}

fn module_path(name: &str) -> Option<&str> {
    name.strip_suffix(".weight")
}

fn name_matches(candidate: &str, pattern: &str) -> bool {
    // A pattern may name the tensor (`….query.weight`) instead of the module.
    let pattern = pattern.strip_suffix(".weight").unwrap_or(pattern);
    candidate == pattern || candidate.strip_suffix(pattern).is_some_and(|head| head.ends_with('.'))
}

/// Compares names with digit runs ordered as numbers.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx = dx.iter().skip_while(|c| **c == b'0').count();
                let ty = dy.iter().skip_while(|c| **c == b'0').count();
                let ord = tx.cmp(&ty).then_with(|| dx[nx - tx..].cmp(&dy[ny - ty..])).then(nx.cmp(&ny));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// The targeted weights of a safetensors model as plan shapes (`rows = d_out`, `cols = d_in`), in
/// model order (natural name order; see the module docs).
pub fn select_targets(tensors: &[TensorInfo], pattern: &TargetPattern) -> Result<Vec<LayerShape>> {
    let mut candidates: Vec<LayerShape> = tensors
        .iter()
        .filter(|t| t.shape.len() == 2)
        .filter_map(|t| module_path(&t.name).map(|m| LayerShape::new(m, t.shape[0], t.shape[1])))
        .collect();
    candidates.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    select_linears(&candidates, pattern).map_err(|e| match e {
        Error::Targets(_) => non_matrix_hint(pattern, tensors).unwrap_or(e),
        other => other,
    })
}

/// The candidates (module paths of linear layers, in model order) that `pattern` selects, in the
/// same order. Every name in a [`TargetPattern::Names`] must match at least one candidate.
pub fn select_linears(candidates: &[LayerShape], pattern: &TargetPattern) -> Result<Vec<LayerShape>> {
    let chosen: Vec<LayerShape> = match pattern {
        TargetPattern::Names(names) => {
            for p in names {
                if !candidates.iter().any(|c| name_matches(&c.name, p)) {
                    return Err(unmatched(p, candidates));
                }
            }
            candidates.iter().filter(|c| names.iter().any(|p| name_matches(&c.name, p))).cloned().collect()
        }
        TargetPattern::Regex(re) => {
            let v: Vec<LayerShape> = candidates.iter().filter(|c| re.is_match(&c.name)).cloned().collect();
            if v.is_empty() {
                return Err(unmatched(re.as_str(), candidates));
            }
            v
        }
    };
    Ok(chosen)
}

/// A pattern naming a tensor that exists but is not a 2-D weight gets its own message.
fn non_matrix_hint(pattern: &TargetPattern, all: &[TensorInfo]) -> Option<Error> {
    let TargetPattern::Names(names) = pattern else { return None };
    names.iter().find_map(|p| {
        all.iter()
            .find(|t| {
                (t.shape.len() != 2 || module_path(&t.name).is_none())
                    && (name_matches(&t.name, p) || module_path(&t.name).is_some_and(|m| name_matches(m, p)))
            })
            .map(|t| {
                Error::Targets(format!(
                    "target `{p}` matches `{}` with shape {:?}, which is not a 2-D `.weight` matrix; only linear weights can be adapted",
                    t.name, t.shape
                ))
            })
    })
}

fn unmatched(pattern: &str, candidates: &[LayerShape]) -> Error {
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|c| {
            let m = c.name.as_str();
            let last = m.rsplit('.').next().unwrap_or(m);
            let tail_len = pattern.len().min(m.len());
            let tail = m.get(m.len() - tail_len..).unwrap_or(m);
            let score = strsim::normalized_levenshtein(pattern, last)
                .max(strsim::normalized_levenshtein(pattern, tail))
                .max(strsim::normalized_levenshtein(pattern, m));
            (score, m)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| natural_cmp(a.1, b.1)));
    let closest: Vec<&str> = scored.iter().take(5).map(|(_, m)| *m).collect();
    Error::Targets(format!(
        "target `{pattern}` matched no 2-D weight among {} candidates; closest: {}",
        candidates.len(),
        if closest.is_empty() { "(the model has no 2-D `.weight` tensors)".to_string() } else { closest.join(", ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_matches_module_paths() {
        let m = "encoder.layer.0.attention.self.query";
        assert!(TargetPattern::names("query,value").unwrap().matches(m));
        assert!(TargetPattern::names("self.query.weight").unwrap().matches(m));
        assert!(!TargetPattern::names("uery").unwrap().matches(m));
        assert!(TargetPattern::regex(r"encoder\.layer\.\d+\.attention\.self\.(query|value)").unwrap().matches(m));
        assert!(!TargetPattern::regex("query").unwrap().matches(m));
    }
    use std::path::PathBuf;

    fn t(name: &str, shape: &[usize]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: "F32".into(),
            shape: shape.to_vec(),
            data_offsets: (0, 0),
            file: PathBuf::new(),
        }
    }

    fn bert() -> Vec<TensorInfo> {
        let mut v = Vec::new();
        for l in [10, 2, 1, 0] {
            for m in ["query", "key", "value"] {
                v.push(t(&format!("encoder.layer.{l}.attention.self.{m}.weight"), &[8, 4]));
                v.push(t(&format!("encoder.layer.{l}.attention.self.{m}.bias"), &[8]));
            }
        }
        v.push(t("embeddings.LayerNorm.weight", &[4]));
        v
    }

    #[test]
    fn suffix_names_match_in_natural_order() {
        let s = select_targets(&bert(), &TargetPattern::names("query,value").unwrap()).unwrap();
        let names: Vec<_> = s.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names[0], "encoder.layer.0.attention.self.query");
        assert_eq!(names[1], "encoder.layer.0.attention.self.value");
        assert_eq!(names[6], "encoder.layer.10.attention.self.query");
        assert_eq!(s.len(), 8);
        assert_eq!((s[0].rows, s[0].cols), (8, 4));
    }

    #[test]
    fn suffix_must_end_at_a_dot() {
        let e = select_targets(&bert(), &TargetPattern::names("uery").unwrap()).unwrap_err().to_string();
        assert!(e.contains("`uery` matched no") && e.contains("query"), "{e}");
    }

    #[test]
    fn regex_is_a_full_match() {
        let s =
            select_targets(&bert(), &TargetPattern::regex(r"encoder\.layer\.(0|1)\..*\.(query|key)").unwrap()).unwrap();
        assert_eq!(s.len(), 4);
        assert!(select_targets(&bert(), &TargetPattern::regex("query").unwrap()).is_err());
    }

    #[test]
    fn non_matrix_targets_are_explained() {
        let e = select_targets(&bert(), &TargetPattern::names("LayerNorm").unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a 2-D"), "{e}");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["a.10.x", "a.2.x", "a.1.y", "a.1.x", "b", "a.02.x"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["a.1.x", "a.1.y", "a.2.x", "a.02.x", "a.10.x", "b"]);
    }
}
