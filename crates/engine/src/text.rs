//! From token bytes to streamed text: only complete UTF-8 is emitted, text that could
//! still become a stop string is held back, and output ends before the first stop string.

#[derive(Clone, Debug, Default)]
pub struct TextStream {
    /// Bytes of an incomplete UTF-8 character.
    pending: Vec<u8>,
    /// Decoded text not yet emitted because it may begin a stop string.
    held: String,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: &[String]) -> TextStream {
        TextStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a token's bytes; returns the text that is now safe to show.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.extend_from_slice(bytes);
        self.decode_pending();
        if let Some(cut) = self.first_stop() {
            self.stopped = true;
            self.held.truncate(cut);
            return std::mem::take(&mut self.held);
        }
        let keep = self.longest_stop_prefix_suffix();
        let emit_to = self.held.len() - keep;
        let rest = self.held.split_off(emit_to);
        std::mem::replace(&mut self.held, rest)
    }

    /// Ends the stream: whatever is held back (and undecodable bytes, replaced).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let tail = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
        self.held.push_str(&tail);
        std::mem::take(&mut self.held)
    }

    fn decode_pending(&mut self) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to `valid` is checked UTF-8.
                    self.held
                        .push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    fn first_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
    }

    /// Length of the longest end of `held` that is the start of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        self.stops
            .iter()
            .map(|stop| partial_suffix_len(&self.held, stop))
            .max()
            .unwrap_or(0)
    }
}

/// The length of the longest end of `text` that is a proper beginning of `pattern`:
/// text that must wait, as `pattern` may be completing.
pub(crate) fn partial_suffix_len(text: &str, pattern: &str) -> usize {
    pattern
        .char_indices()
        .skip(1)
        .map(|(i, _)| i)
        .filter(|&i| text.ends_with(&pattern[..i]))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_emitted_only_when_complete() {
        let mut s = TextStream::new(&[]);
        let e = "é".as_bytes();
        assert_eq!(s.push(b"caf"), "caf");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(&[0xff]), "\u{fffd}");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_match_across_tokens_and_never_leak() {
        let mut s = TextStream::new(&["</end>".to_string(), "STOP".to_string()]);
        assert_eq!(s.push(b"hello </"), "hello ");
        assert_eq!(s.push(b"en"), "");
        assert_eq!(s.push(b"d> more"), "");
        assert!(s.stopped());
        assert_eq!(s.push(b"x"), "");

        let mut s = TextStream::new(&["STOP".to_string()]);
        assert_eq!(s.push(b"a ST"), "a ");
        assert_eq!(s.push(b"ART"), "START");
        assert_eq!(s.push(b" xSTO"), " x");
        assert_eq!(s.finish(), "STO");
    }
}
