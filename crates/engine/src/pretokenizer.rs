//! What each `tokenizer.ggml.pre` name means for a byte-level BPE vocabulary: llama.cpp's
//! table (`llama-vocab.cpp`). A rule is a list of regular expressions applied one after
//! the other, each splitting the pieces the previous one left (a match and the text
//! between matches become pieces of their own), before GPT-2's byte-to-character map.
//!
//! The expressions are llama.cpp's own spellings, not the model's `tokenizer.json` ones:
//! llama.cpp matches `\p{Lu}` and `\p{Ll}` alike (it collapses every letter to one class),
//! so where the original told them apart it uses look-aheads such as
//! `(?=[\p{L}])[^a-z]`, and `(?i:'s)` becomes `'[sS]`. Evaluated with full Unicode they
//! split text the way llama.cpp does, which the `pretokenizers` test checks name by name.

/// How text is cut into pieces before BPE merges run inside each piece.
#[derive(Debug)]
pub struct PreTokenizer {
    pub regexes: &'static [&'static str],
    /// A piece that is itself in the vocabulary is taken whole, before any merge
    /// (Llama 3's and Tekken's tokenizers).
    pub ignore_merges: bool,
    /// Whether a BOS token starts a prompt when the file does not say
    /// (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILING: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
/// llama.cpp turns non-ASCII spaces into `\v` before it runs an expression without
/// `\p{..}` classes, so its range U+0800..U+4E00 never takes U+3000 or U+2028.
const CJK: &str = r"(?:(?!\s)[一-龥ࠀ-一가-퟿])+";

const fn rule(regexes: &'static [&'static str]) -> PreTokenizer {
    PreTokenizer {
        regexes,
        ignore_merges: false,
        add_bos: false,
    }
}

/// `tokenizer.ggml.pre` values and their rules, as llama.cpp groups them. Names it knows
/// but that need more than splitting (embedding models' separators, SentencePiece-style
/// BPE without the byte map, hand-written digit groupers) are not here, so they are
/// refused by name rather than tokenized differently.
const RULES: &[(&[&str], PreTokenizer)] = &[
    (
        &["default"],
        rule(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]),
    ),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        PreTokenizer {
            regexes: &[LLAMA3],
            ignore_merges: true,
            add_bos: true,
        },
    ),
    (&["dbrx", "smaug-bpe"], rule(&[LLAMA3])),
    (
        &["tekken"],
        PreTokenizer {
            regexes: &[TEKKEN],
            ignore_merges: true,
            add_bos: true,
        },
    ),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
        ],
        rule(&[GPT2]),
    ),
    (
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        rule(&[r"\p{N}", GPT2]),
    ),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        rule(&[QWEN2]),
    ),
    (&["qwen35"], rule(&[QWEN35])),
    (
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        rule(&[GPT4O]),
    ),
    (
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        rule(&[r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3]),
    ),
    (
        &["deepseek-coder"],
        rule(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"]),
    ),
    (
        &["falcon"],
        rule(&[
            r"[\p{P}\$\+<=>\^~\|`]+",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
            "[0-9][0-9][0-9]",
        ]),
    ),
    (&["poro-chat", "bloom", "gpt3-finnish"], rule(&[PORO])),
    (&["viking"], rule(&[PORO, r"\p{N}"])),
    (
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        rule(&[BAILING]),
    ),
    (&["seed-coder"], rule(&[SEED_CODER])),
    (
        &["ufakzeka"],
        rule(&[
            r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ]),
    ),
    (&["laguna"], rule(&[r"[^\n]+|[\n]+", QWEN2])),
];

/// The rule `tokenizer.ggml.pre = name` stands for, or `None` for a name we cannot follow.
pub fn pre_tokenizer(name: &str) -> Option<&'static PreTokenizer> {
    RULES
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, rule)| rule)
}

/// One name per distinct rule (what the tests check against llama.cpp).
pub fn rule_names() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|(names, _)| names[0])
}

/// Every name `pre_tokenizer` accepts, for error messages.
pub fn known_names() -> Vec<&'static str> {
    RULES
        .iter()
        .flat_map(|(names, _)| names.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::SplitDelimiterBehavior::Isolated;

    #[test]
    fn every_expression_compiles_and_names_are_unique() {
        let names = known_names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for (_, rule) in RULES {
            for r in rule.regexes {
                Split::new(SplitPattern::Regex((*r).into()), Isolated, false)
                    .unwrap_or_else(|e| panic!("{r}: {e}"));
            }
        }
        assert!(pre_tokenizer("tekken").unwrap().ignore_merges);
        assert!(pre_tokenizer("kimi-k2").is_none());
    }
}
