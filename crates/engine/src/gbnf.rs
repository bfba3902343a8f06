//! GBNF, llama.cpp's grammar format, translated to llguidance's Lark dialect.
//!
//! Every GBNF construct has a Lark twin: `name ::= ...` rules (names lowercased, `-` as
//! `_`), string literals, character classes and `.` (as regexes), groups, `|`, and the
//! repetitions `* + ? {m} {m,} {m,n}`. The start rule is `root`. Token references
//! (`<[1234]>`, `<|name|>`) are refused with a message that says so.

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Name(String),
    Define,
    Literal(String),
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    AnyChar,
    Open,
    Close,
    Bar,
    Repeat(String),
    Newline,
}

/// The Lark grammar equivalent to GBNF `source`, or a message naming what is wrong
/// and on which line.
pub fn gbnf_to_lark(source: &str) -> Result<String, String> {
    let tokens = lex(source)?;
    let rules = split_rules(&tokens)?;
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut taken: Vec<String> = vec!["start".into()];
    for (name, _, line) in &rules {
        if names.contains_key(name.as_str()) {
            return Err(format!("GBNF line {line}: rule {name:?} is defined twice"));
        }
        let mut lark = name.to_lowercase().replace('-', "_");
        if !lark.starts_with(|c: char| c.is_ascii_lowercase()) {
            lark = format!("r_{lark}");
        }
        let base = lark.clone();
        let mut k = 2;
        while taken.contains(&lark) {
            lark = format!("{base}_{k}");
            k += 1;
        }
        taken.push(lark.clone());
        names.insert(name, lark);
    }
    let root = names
        .get("root")
        .ok_or("GBNF: the grammar has no `root` rule")?;
    let mut out = format!("start: {root}\n");
    for (name, body, line) in &rules {
        out.push_str(&names[name.as_str()]);
        out.push(':');
        let mut previous: Option<&Token> = None;
        for t in body.iter().chain([&Token::Newline]) {
            let starts_empty = matches!(previous, None | Some(Token::Bar | Token::Open));
            if matches!(t, Token::Bar | Token::Close | Token::Newline) && starts_empty {
                out.push_str(" \"\"");
            }
            let piece = match t {
                Token::Name(n) => names.get(n.as_str()).cloned().ok_or_else(|| {
                    format!("GBNF line {line}: rule {n:?} is used but never defined")
                })?,
                Token::Literal(s) => serde_json::to_string(s).map_err(|e| e.to_string())?,
                Token::Class { negated, items } => class_regex(*negated, items),
                Token::AnyChar => "/(?s:.)/".into(),
                Token::Open => "(".into(),
                Token::Close => ")".into(),
                Token::Bar => "|".into(),
                Token::Repeat(r) => r.clone(),
                Token::Newline => "\n".into(),
                Token::Define => return Err(format!("GBNF line {line}: misplaced `::=`")),
            };
            if !matches!(t, Token::Repeat(_) | Token::Newline) {
                out.push(' ');
            }
            out.push_str(&piece);
            previous = Some(t);
        }
    }
    Ok(out)
}

/// (name, body, line) of each rule: a rule runs to the first newline outside
/// parentheses that does not follow `::=` or `|`.
fn split_rules(tokens: &[(Token, usize)]) -> Result<Vec<(String, Vec<Token>, usize)>, String> {
    let mut rules = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (t, line) = &tokens[i];
        match (t, tokens.get(i + 1)) {
            (Token::Newline, _) => {
                i += 1;
                continue;
            }
            (Token::Name(name), Some((Token::Define, _))) => {
                let mut body = Vec::new();
                let mut depth = 0usize;
                i += 2;
                while let Some((t, at)) = tokens.get(i) {
                    let continues = matches!(body.last(), None | Some(Token::Bar));
                    match t {
                        Token::Newline if depth == 0 && !continues => break,
                        Token::Newline => {}
                        Token::Define => {
                            return Err(format!("GBNF line {at}: `::=` inside a rule (a rule name is missing its own line?)"))
                        }
                        Token::Open => {
                            depth += 1;
                            body.push(t.clone());
                        }
                        Token::Close => {
                            depth = depth.checked_sub(1).ok_or(format!("GBNF line {at}: unmatched `)`"))?;
                            body.push(t.clone());
                        }
                        Token::Repeat(_)
                            if matches!(body.last(), None | Some(Token::Bar | Token::Open)) =>
                        {
                            return Err(format!("GBNF line {at}: a repetition follows nothing"))
                        }
                        _ => body.push(t.clone()),
                    }
                    i += 1;
                }
                if depth > 0 {
                    return Err(format!("GBNF line {line}: unclosed `(` in rule {name:?}"));
                }
                rules.push((name.clone(), body, *line));
            }
            _ => return Err(format!("GBNF line {line}: expected `name ::= ...`")),
        }
    }
    Ok(rules)
}

fn class_regex(negated: bool, items: &[(char, char)]) -> String {
    let one = |c: char| {
        if c.is_ascii_alphanumeric() {
            c.to_string()
        } else {
            format!("\\x{{{:X}}}", c as u32)
        }
    };
    let mut out = String::from(if negated { "/[^" } else { "/[" });
    for &(a, b) in items {
        out.push_str(&one(a));
        if b != a {
            out.push('-');
            out.push_str(&one(b));
        }
    }
    out.push_str("]/");
    out
}

fn lex(source: &str) -> Result<Vec<(Token, usize)>, String> {
    let mut out = Vec::new();
    let mut chars = source.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        let token = match c {
            '\n' => {
                line += 1;
                Token::Newline
            }
            c if c.is_whitespace() => continue,
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
                continue;
            }
            ':' => {
                if chars.next() != Some(':') || chars.next() != Some('=') {
                    return Err(format!("GBNF line {line}: expected `::=`"));
                }
                Token::Define
            }
            '"' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err(format!("GBNF line {line}: unterminated string"))
                        }
                        Some('"') => break,
                        Some('\\') => text.push(escape(&mut chars, line)?),
                        Some(c) => text.push(c),
                    }
                }
                Token::Literal(text)
            }
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut items = Vec::new();
                loop {
                    let first = match chars.next() {
                        None | Some('\n') => {
                            return Err(format!("GBNF line {line}: unterminated character class"))
                        }
                        Some(']') => break,
                        Some('\\') => escape(&mut chars, line)?,
                        Some(c) => c,
                    };
                    let mut last = first;
                    if chars.peek() == Some(&'-') {
                        let mut ahead = chars.clone();
                        ahead.next();
                        if ahead.peek().is_some_and(|&c| c != ']') {
                            chars.next();
                            last = match chars.next() {
                                Some('\\') => escape(&mut chars, line)?,
                                Some(c) => c,
                                None => {
                                    return Err(format!("GBNF line {line}: unterminated range"))
                                }
                            };
                            if last < first {
                                return Err(format!(
                                    "GBNF line {line}: range {first:?}-{last:?} is backwards"
                                ));
                            }
                        }
                    }
                    items.push((first, last));
                }
                Token::Class { negated, items }
            }
            '.' => Token::AnyChar,
            '(' => Token::Open,
            ')' => Token::Close,
            '|' => Token::Bar,
            '*' | '+' | '?' => Token::Repeat(c.to_string()),
            '{' => {
                let mut spec = String::from("{");
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_ascii_digit() || c == ',' || c == ' ' => {
                            if c != ' ' {
                                spec.push(c)
                            }
                        }
                        _ => return Err(format!("GBNF line {line}: bad repetition `{{m,n}}`")),
                    }
                }
                let bounds: Vec<&str> = spec[1..].split(',').collect();
                let valid = match bounds.as_slice() {
                    [m] => !m.is_empty(),
                    [m, n] => {
                        !m.is_empty()
                            && (n.is_empty() || n.parse::<u64>().ok() >= m.parse::<u64>().ok())
                    }
                    _ => false,
                };
                if !valid {
                    return Err(format!("GBNF line {line}: bad repetition `{spec}}}`"));
                }
                spec.push('}');
                Token::Repeat(spec)
            }
            '<' => {
                return Err(format!(
                    "GBNF line {line}: token references (`<[id]>`, `<|name|>`) are not supported"
                ))
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let mut name = c.to_string();
                while let Some(c) =
                    chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                {
                    name.push(c);
                }
                Token::Name(name)
            }
            other => return Err(format!("GBNF line {line}: unexpected character {other:?}")),
        };
        out.push((token, line));
    }
    Ok(out)
}

/// The character after a backslash (in a string or a class).
fn escape(chars: &mut std::iter::Peekable<std::str::Chars>, line: usize) -> Result<char, String> {
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize| {
        let digits: String = (0..n).filter_map(|_| chars.next()).collect();
        u32::from_str_radix(&digits, 16)
            .ok()
            .filter(|_| digits.len() == n)
            .and_then(char::from_u32)
            .ok_or(format!("GBNF line {line}: bad escape with {digits:?}"))
    };
    match chars.next() {
        Some('n') => Ok('\n'),
        Some('r') => Ok('\r'),
        Some('t') => Ok('\t'),
        Some('x') => hex(chars, 2),
        Some('u') => hex(chars, 4),
        Some('U') => hex(chars, 8),
        Some(c @ ('\\' | '"' | '[' | ']' | '-' | '^')) => Ok(c),
        other => Err(format!(
            "GBNF line {line}: unknown escape \\{}",
            other.map_or(String::new(), String::from)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_every_construct() {
        let gbnf = r#"
# a comment
root ::= greeting ws-char* name{1,3} ("!" | "?")? [^\n\]a-c]+ . end
greeting ::= "Hello, \"x\"\n" |
    "Hi"
ws-char ::= [ \t]
name ::= [A-Z] [a-z]{2,}
end ::= ( "a"
  | ) "b"
"#;
        let lark = gbnf_to_lark(gbnf).unwrap();
        let want = concat!(
            "start: root\n",
            "root: greeting ws_char* name{1,3} ( \"!\" | \"?\" )? /[^\\x{A}\\x{5D}a-c]/+ /(?s:.)/ end\n",
            "greeting: \"Hello, \\\"x\\\"\\n\" | \"Hi\"\n",
            "ws_char: /[\\x{20}\\x{9}]/\n",
            "name: /[A-Z]/ /[a-z]/{2,}\n",
            "end: ( \"a\" | \"\" ) \"b\"\n",
        );
        assert_eq!(lark, want);
    }

    #[test]
    fn names_that_collide_or_start_oddly_stay_distinct() {
        let lark = gbnf_to_lark("root ::= a-b a_b 9x\na-b ::= \"1\"\na_b ::= \"2\"\n9x ::= \"3\"")
            .unwrap();
        assert!(lark.contains("root: a_b a_b_2 r_9x\n"), "{lark}");
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (gbnf, says) in [
            ("item ::= \"x\"", "no `root`"),
            ("root ::= missing", "never defined"),
            ("root ::= \"x\"\nroot ::= \"y\"", "defined twice"),
            ("root ::= (\"x\"", "unclosed"),
            ("root ::= \"x\")", "unmatched"),
            ("root ::= \"x", "unterminated string"),
            ("root ::= [a-", "unterminated character class"),
            ("root ::= [z-a]", "backwards"),
            ("root ::= \"x\"{3,1}", "bad repetition"),
            ("root ::= <[12]>", "token references"),
            ("root ::= * \"x\"", "follows nothing"),
            ("root := \"x\"", "expected `::=`"),
            ("\"x\" ::= root", "expected `name ::= ...`"),
            ("root ::= \"\\q\"", "unknown escape"),
        ] {
            let e = gbnf_to_lark(gbnf).unwrap_err();
            assert!(e.contains(says), "{gbnf:?}: {e}");
        }
        assert!(gbnf_to_lark("root ::= \"x\"\nroot2 ::= \"y\"\n\n  oops")
            .unwrap_err()
            .contains("line 4"));
    }
}
