//! Content-addressed model store. Blobs are named by their SHA-256
//! (`blobs/sha256-<hex>`); manifests (`manifests/<name>.json`) map a model name to a
//! digest with its source, size and time. Blobs are installed atomically and only after
//! their hash is checked; a file lock makes concurrent pulls of one model safe.

mod blob;
mod error;
mod http;
mod known;
mod manifest;
mod pip;
mod source;

pub use error::{Result, StoreError};
pub use known::{KnownModel, WheelEntry, DEFAULT_MODEL, GEMMA3_270M, KNOWN_MODELS};
pub use manifest::Manifest;
pub use source::Source;

use blob::{hash_file, BlobWriter};

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The outcome of re-hashing one blob.
#[derive(Debug, Clone)]
pub struct BlobCheck {
    pub digest: String,
    pub ok: bool,
    pub names: Vec<String>,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `$LLAMA_GPU_HOME`, else `~/.cache/llama-gpu`.
    pub fn open_default() -> Result<Store> {
        let root = match std::env::var_os("LLAMA_GPU_HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home),
            _ => {
                let home = std::env::var_os("HOME").ok_or(StoreError::NoHome)?;
                PathBuf::from(home).join(".cache").join("llama-gpu")
            }
        };
        Store::open(root)
    }

    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for dir in ["blobs", "manifests", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(format!("sha256-{digest}"))
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{name}.json"))
    }

    /// Holds the store's exclusive lock until dropped.
    fn lock(&self) -> Result<File> {
        let path = self.root.join(".lock");
        let file = File::create(&path).map_err(|e| StoreError::io(&path, e))?;
        file.lock().map_err(|e| StoreError::io(&path, e))?;
        Ok(file)
    }

    pub fn list(&self) -> Result<Vec<Manifest>> {
        let dir = self.root.join("manifests");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let path = entry.map_err(|e| StoreError::io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(Manifest::read(&path)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Option<Manifest>> {
        let name = known::canonical_name(name);
        let path = self.manifest_path(name);
        if !path.exists() {
            return Ok(None);
        }
        Manifest::read(&path).map(Some)
    }

    /// Fetches a model (a known name, `hf:OWNER/REPO/FILE`, an `https://` URL, or a
    /// local file) unless a manifest of that name with its blob already exists.
    pub fn pull(&self, spec: &str, expected_sha256: Option<&str>) -> Result<Manifest> {
        let source = Source::parse(spec)?;
        let name = source.default_name();
        let _lock = self.lock()?;
        if let Some(m) = self.get(&name)? {
            if self.blob_path(&m.digest).exists() {
                return Ok(m);
            }
        }
        let expected = expected_sha256
            .map(str::to_ascii_lowercase)
            .or_else(|| source.known_sha256().map(str::to_owned));
        let tmp = self.root.join("tmp");
        let (digest, size) = match &source {
            Source::Pip(model) => {
                if let Some(license) = model.license {
                    tracing::warn!("{} comes under its own terms: {license}", model.name);
                }
                pip::fetch(model, &tmp, |r, len| {
                    self.install(r, len, expected.as_deref(), model.name)
                })?
            }
            Source::Url(url) | Source::HuggingFace { url, .. } => {
                let part = tmp.join(format!("{}.part", blob::hash_reader(url.as_bytes(), &tmp)?));
                let advertised = http::download(url, &part)?;
                let expected = expected.or(advertised);
                let installed = self.install_file(&part, expected.as_deref());
                let _ = fs::remove_file(&part);
                installed?
            }
            Source::File(path) => self.install_file(path, expected.as_deref())?,
        };
        self.write_manifest(&name, &digest, size, &source.to_string())
    }

    /// Copies a local file into the store under `name` (default: the file stem).
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Manifest> {
        let name = match name {
            Some(n) => n.to_owned(),
            None => Source::File(path.to_path_buf()).default_name(),
        };
        manifest::check_name(&name)?;
        gguf::GgufFile::open(path)?;
        let _lock = self.lock()?;
        let (digest, size) = self.install_file(path, None)?;
        let source = format!("file:{}", path.display());
        self.write_manifest(&name, &digest, size, &source)
    }

    fn install_file(&self, path: &Path, expected: Option<&str>) -> Result<(String, u64)> {
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        self.install(file, len, expected, &path.display().to_string())
    }

    /// Streams `reader` into a temp file while hashing, checks the digest, then renames
    /// it into `blobs/`. A mismatching blob is deleted, never installed.
    fn install(
        &self,
        reader: impl std::io::Read,
        len: u64,
        expected: Option<&str>,
        what: &str,
    ) -> Result<(String, u64)> {
        let mut writer = BlobWriter::create(&self.root.join("tmp"), len, what)?;
        writer.copy_from(reader)?;
        let (tmp, digest, size) = writer.finish()?;
        if let Some(expected) = expected {
            if digest != expected {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::HashMismatch {
                    what: what.into(),
                    expected: expected.into(),
                    actual: digest,
                });
            }
        }
        let dest = self.blob_path(&digest);
        fs::rename(&tmp, &dest).map_err(|e| StoreError::io(&dest, e))?;
        Ok((digest, size))
    }

    fn write_manifest(
        &self,
        name: &str,
        digest: &str,
        size: u64,
        source: &str,
    ) -> Result<Manifest> {
        let m = Manifest::new(name, digest, size, source)?;
        m.write_atomic(&self.manifest_path(name), &self.root.join("tmp"))?;
        Ok(m)
    }

    /// Removes a manifest, and its blob when no other manifest refers to it.
    pub fn remove(&self, name: &str) -> Result<Manifest> {
        let _lock = self.lock()?;
        let m = self
            .get(name)?
            .ok_or_else(|| StoreError::NotFound { model: name.into() })?;
        let path = self.manifest_path(&m.name);
        fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        if !self.list()?.iter().any(|o| o.digest == m.digest) {
            let blob = self.blob_path(&m.digest);
            if blob.exists() {
                fs::remove_file(&blob).map_err(|e| StoreError::io(&blob, e))?;
            }
        }
        Ok(m)
    }

    /// Re-hashes every blob and reports which still match their names.
    pub fn verify(&self) -> Result<Vec<BlobCheck>> {
        let manifests = self.list()?;
        let dir = self.root.join("blobs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let path = entry.map_err(|e| StoreError::io(&dir, e))?.path();
            let Some(digest) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("sha256-"))
            else {
                continue;
            };
            let actual = hash_file(&path)?;
            let names = manifests
                .iter()
                .filter(|m| m.digest == digest)
                .map(|m| m.name.clone())
                .collect();
            out.push(BlobCheck {
                digest: digest.to_owned(),
                ok: actual == digest,
                names,
            });
        }
        for m in &manifests {
            if !out.iter().any(|c| c.digest == m.digest) {
                out.push(BlobCheck {
                    digest: m.digest.clone(),
                    ok: false,
                    names: vec![m.name.clone()],
                });
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Finds the file for `-m MODEL`: an existing path, a manifest name, a digest
    /// prefix of an installed blob, or a known model name (pulled on first use).
    pub fn resolve(&self, model: &str) -> Result<PathBuf> {
        let as_path = Path::new(model);
        if as_path.is_file() {
            return Ok(as_path.to_path_buf());
        }
        if let Some(m) = self.get(model)? {
            let blob = self.blob_path(&m.digest);
            if blob.exists() {
                return Ok(blob);
            }
        }
        let lower = model.to_ascii_lowercase();
        if lower.len() >= 6 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<Manifest> = self
                .list()?
                .into_iter()
                .filter(|m| m.digest.starts_with(&lower))
                .collect();
            let mut digests: Vec<&str> = matches.iter().map(|m| m.digest.as_str()).collect();
            digests.dedup();
            match digests.len() {
                1 => return Ok(self.blob_path(digests[0])),
                0 => {}
                _ => {
                    return Err(StoreError::Ambiguous {
                        prefix: model.into(),
                        count: digests.len(),
                    })
                }
            }
        }
        if known::find(model).is_some() {
            let m = self.pull(model, None)?;
            return Ok(self.blob_path(&m.digest));
        }
        Err(StoreError::NotFound {
            model: model.into(),
        })
    }
}
