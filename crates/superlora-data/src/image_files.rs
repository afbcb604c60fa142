//! The user's own labelled images as files, decoded per batch.
//!
//! Two layouts:
//!
//! - **A folder** ([`ImageFiles::from_folder`], the ImageFolder convention): `DIR/<class>/<image>`.
//!   The classes are the sub-folders' names in sorted (byte) order, the files of each class are
//!   taken in sorted order, the extensions `.png`, `.jpg`, `.jpeg` are accepted in any case.
//!   Names starting with a dot (`.DS_Store`, `.cache/`) are skipped everywhere, plain files
//!   directly in `DIR` (a README, a labels file) are ignored. Inside a class folder, any other
//!   file or a nested folder is an error naming it (rather than a silent skip that would hide a
//!   misplaced file); an empty class folder is an error; 2 to 256 classes.
//! - **A CSV** ([`ImageFiles::from_csv`]) with `path` and `label` columns, paths relative to the
//!   CSV's own folder (absolute paths are used as they are). A missing file is an error naming the
//!   CSV line. Classes are the sorted unique labels (numeric order when all are integers), as for
//!   texts; [`ImageFiles::from_csv_with_classes`] reads a validation or test CSV against the
//!   training classes.
//!
//! Images are decoded ([`decode_rgb`](crate::decode::decode_rgb)) when a batch asks for them and
//! kept in a cache bounded by decoded bytes (least recently used images leave first; default
//! [`DEFAULT_CACHE_BYTES`]), so a set of 100,000 files never sits decoded in memory at once. A
//! corrupt or truncated file is an error naming it, when its batch is built.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Device, Tensor};

use crate::decode::{RgbImage, load_rgb};
use crate::error::{Error, Result};
use crate::image::out_of_range;
use crate::preprocess::{check_normalization, check_size, push_rgb};
use crate::table::{Column, Kind, MAX_CLASSES, TableFormat, class_names, for_each_row};

/// The default bound on decoded bytes kept in the cache: 256 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// The file extensions taken as images (compared without case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Labelled image files with a bounded cache of decoded images.
pub struct ImageFiles {
    /// One file per example.
    pub paths: Vec<PathBuf>,
    /// One label per file, `< classes.len()`.
    pub labels: Vec<u8>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for ImageFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFiles")
            .field("files", &self.paths.len())
            .field("classes", &self.classes)
            .field("cache_limit", &self.lock().limit)
            .finish()
    }
}

impl Clone for ImageFiles {
    /// A copy with the same cache bound and an empty cache.
    fn clone(&self) -> Self {
        ImageFiles {
            paths: self.paths.clone(),
            labels: self.labels.clone(),
            classes: self.classes.clone(),
            cache: Mutex::new(Cache::new(self.lock().limit)),
        }
    }
}

impl ImageFiles {
    /// Checks that there is a label per path and every label names a class (1 to 256 classes).
    pub fn new(paths: Vec<PathBuf>, labels: Vec<u8>, classes: Vec<String>) -> Result<Self> {
        if paths.len() != labels.len() {
            return Err(Error::invalid("labels", labels.len(), format!("must be one per file ({})", paths.len())));
        }
        if classes.is_empty() || classes.len() > MAX_CLASSES {
            return Err(Error::invalid("classes", classes.len(), format!("must be 1..={MAX_CLASSES}")));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| usize::from(**l) >= classes.len()) {
            return Err(Error::invalid("labels", l, format!("label of file {i} must be below {}", classes.len())));
        }
        Ok(ImageFiles { paths, labels, classes, cache: Mutex::new(Cache::new(DEFAULT_CACHE_BYTES)) })
    }

    /// The same files with a cache of at most `bytes` decoded bytes (0 turns caching off). An
    /// image larger than the bound is decoded each time it is asked for and never kept.
    pub fn with_cache_bytes(self, bytes: usize) -> Self {
        self.lock().set_limit(bytes);
        self
    }

    /// Reads `dir/<class>/<image>` as the module says.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let shown = dir.display().to_string();
        let mut classes: Vec<(String, PathBuf)> = Vec::new();
        for (name, path) in visible_entries(dir)? {
            if path.is_dir() {
                let class = name.into_string().map_err(|n| {
                    Error::format(path.display(), format!("class folder name {n:?} is not UTF-8; rename it"))
                })?;
                classes.push((class, path));
            }
        }
        classes.sort();
        check_class_count(&shown, classes.len(), "class sub-folder(s)")?;
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        for (label, (_, class_dir)) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = Vec::new();
            for (_, path) in visible_entries(class_dir)? {
                if path.is_dir() {
                    return Err(Error::format(
                        path.display(),
                        "a folder inside a class folder; put the images directly in DIR/<class>/",
                    ));
                }
                if !has_image_extension(&path) {
                    return Err(Error::format(
                        path.display(),
                        "not a .png, .jpg or .jpeg file; a class folder must hold only images \
                         (remove it, or hide it with a leading dot)",
                    ));
                }
                files.push(path);
            }
            if files.is_empty() {
                return Err(Error::format(
                    class_dir.display(),
                    "empty class folder; every class needs at least one .png, .jpg or .jpeg image",
                ));
            }
            files.sort();
            labels.extend(std::iter::repeat_n(label as u8, files.len()));
            paths.extend(files);
        }
        ImageFiles::new(paths, labels, classes.into_iter().map(|(c, _)| c).collect())
    }

    /// Reads a CSV of `path,label` rows, the classes defined by its own labels.
    pub fn from_csv(csv: &Path) -> Result<Self> {
        let rows = read_path_rows(csv)?;
        let classes = class_names(&rows.names);
        check_class_count(&csv.display().to_string(), classes.len(), "distinct label(s) in column `label`")?;
        rows.into_files(classes)
    }

    /// Reads a CSV of `path,label` rows against the training `classes`: a label that is not one of
    /// them is an error naming the line.
    pub fn from_csv_with_classes(csv: &Path, classes: &[String]) -> Result<Self> {
        read_path_rows(csv)?.into_files(classes.to_vec())
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no files.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Image `i`, decoded, from the cache when it is there.
    pub fn image(&self, i: usize) -> Result<Arc<RgbImage>> {
        let path = self.paths.get(i).ok_or_else(|| out_of_range(i, self.paths.len()))?;
        if let Some(image) = self.lock().get(i) {
            return Ok(image);
        }
        let image = Arc::new(load_rgb(path)?);
        self.lock().insert(i, Arc::clone(&image));
        Ok(image)
    }

    /// The images at `indices` as a normalised `[B, 3, size, size]` f32 tensor on `device`, as
    /// [`to_tensor_rgb`](crate::preprocess::to_tensor_rgb); one image is decoded at a time.
    pub fn batch(
        &self,
        indices: &[usize],
        size: usize,
        mean: [f32; 3],
        std: [f32; 3],
        device: &Device,
    ) -> Result<Tensor> {
        check_size(size)?;
        check_normalization(mean, std)?;
        let mut plane = Vec::with_capacity(size * size);
        let mut data = Vec::with_capacity(indices.len() * 3 * size * size);
        for &i in indices {
            let image = self.image(i)?;
            push_rgb(&image, size, mean, std, &mut plane, &mut data)
                .map_err(|e| Error::format(self.paths[i].display(), e.to_string()))?;
        }
        Ok(Tensor::from_vec(data, (indices.len(), 3, size, size), device)?)
    }

    /// How many files have been decoded so far (cache misses).
    pub fn decodes(&self) -> u64 {
        self.lock().decodes
    }

    /// Decoded bytes now held by the cache (never above its bound).
    pub fn cached_bytes(&self) -> usize {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic elsewhere while holding the lock leaves a consistent cache: keep using it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check_class_count(source: &str, n: usize, what: &str) -> Result<()> {
    if n < 2 {
        return Err(Error::format(source, format!("found {n} {what}; classification needs at least 2 classes")));
    }
    if n > MAX_CLASSES {
        return Err(Error::format(source, format!("found {n} {what}; at most {MAX_CLASSES} classes are supported")));
    }
    Ok(())
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The entries of `dir` whose names do not start with a dot.
fn visible_entries(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        out.push((name, entry.path()));
    }
    Ok(out)
}

/// The rows of a `path,label` CSV: resolved paths, interned labels, lines.
struct PathRows {
    csv: String,
    paths: Vec<PathBuf>,
    ids: Vec<u32>,
    names: Vec<String>,
    lines: Vec<u64>,
}

const CSV_FIX: &str = "an image CSV needs the columns `path` (relative to the CSV's folder) and `label`";

fn read_path_rows(csv: &Path) -> Result<PathRows> {
    let name = csv.display().to_string();
    let base = csv.parent().unwrap_or(Path::new("."));
    let file = std::fs::File::open(csv).map_err(|source| Error::Io { path: csv.to_path_buf(), source })?;
    let wanted = [
        Column { name: "path", fix: CSV_FIX, kind: Kind::Text },
        Column { name: "label", fix: CSV_FIX, kind: Kind::Label },
    ];
    let mut rows =
        PathRows { csv: name.clone(), paths: Vec::new(), ids: Vec::new(), names: Vec::new(), lines: Vec::new() };
    let mut seen: HashMap<String, u32> = HashMap::new();
    for_each_row(file, &name, TableFormat::Csv, &wanted, |line, fields| {
        let (p, label) = (fields[0].trim(), fields[1].trim());
        if p.is_empty() || label.is_empty() {
            return Err(Error::format(format!("{name}:{line}"), "empty path or label; fill it in or remove the row"));
        }
        let path = base.join(p);
        if !path.is_file() {
            return Err(Error::format(
                format!("{name}:{line}"),
                format!("no file {} (paths are relative to the CSV's folder)", path.display()),
            ));
        }
        let id = match seen.get(label) {
            Some(&id) => id,
            None => {
                let id = rows.names.len() as u32;
                seen.insert(label.to_string(), id);
                rows.names.push(label.to_string());
                id
            }
        };
        rows.paths.push(path);
        rows.ids.push(id);
        rows.lines.push(line);
        Ok(())
    })?;
    if rows.paths.is_empty() {
        return Err(Error::format(&name, "no rows: the file has no data after its header"));
    }
    Ok(rows)
}

impl PathRows {
    fn into_files(self, classes: Vec<String>) -> Result<ImageFiles> {
        let index: HashMap<&str, u8> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u8)).collect();
        let mut labels = Vec::with_capacity(self.ids.len());
        for (row, &id) in self.ids.iter().enumerate() {
            let name = self.names.get(id as usize).map_or("", String::as_str);
            match index.get(name) {
                Some(&c) => labels.push(c),
                None => {
                    let line = self.lines.get(row).copied().unwrap_or(0);
                    return Err(Error::format(
                        format!("{}:{line}", self.csv),
                        format!(
                            "label `{name}` never occurs in the training file; classes are [{}]",
                            classes.join(", ")
                        ),
                    ));
                }
            }
        }
        ImageFiles::new(self.paths, labels, classes)
    }
}

/// Least-recently-used images, bounded by their decoded bytes.
#[derive(Debug)]
struct Cache {
    limit: usize,
    used: usize,
    tick: u64,
    decodes: u64,
    entries: HashMap<usize, (Arc<RgbImage>, u64)>,
    by_age: BTreeMap<u64, usize>,
}

impl Cache {
    fn new(limit: usize) -> Self {
        Cache { limit, used: 0, tick: 0, decodes: 0, entries: HashMap::new(), by_age: BTreeMap::new() }
    }

    fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        self.evict_to(limit);
    }

    fn get(&mut self, i: usize) -> Option<Arc<RgbImage>> {
        self.tick += 1;
        let tick = self.tick;
        let (image, age) = self.entries.get_mut(&i)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, i);
        Some(Arc::clone(image))
    }

    fn insert(&mut self, i: usize, image: Arc<RgbImage>) {
        self.decodes += 1;
        let bytes = image.bytes();
        if bytes > self.limit || self.entries.contains_key(&i) {
            return;
        }
        self.evict_to(self.limit - bytes);
        self.tick += 1;
        self.entries.insert(i, (image, self.tick));
        self.by_age.insert(self.tick, i);
        self.used += bytes;
    }

    /// Drops the oldest images until at most `target` bytes are held.
    fn evict_to(&mut self, target: usize) {
        while self.used > target {
            let Some((_, i)) = self.by_age.pop_first() else { break };
            if let Some((image, _)) = self.entries.remove(&i) {
                self.used -= image.bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(bytes: usize) -> Arc<RgbImage> {
        Arc::new(RgbImage { w: bytes / 3, h: 1, pixels: vec![0; bytes / 3 * 3] })
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let mut c = Cache::new(30);
        c.insert(0, img(12));
        c.insert(1, img(12));
        assert!(c.get(0).is_some());
        c.insert(2, img(12)); // evicts 1, the oldest
        assert_eq!(c.used, 24);
        assert!(c.get(1).is_none() && c.get(0).is_some() && c.get(2).is_some());
        c.insert(3, img(60)); // larger than the bound: not kept
        assert_eq!(c.used, 24);
        c.set_limit(12);
        assert_eq!(c.used, 12);
        assert!(c.get(2).is_some());
    }
}
