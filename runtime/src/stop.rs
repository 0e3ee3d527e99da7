//! Stop strings over streamed text: text that might be the start of a stop string is held back
//! until it is known not to be, so emitted text never contains (part of) a stop string.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopScan {
    /// Safe to emit (may be empty while a possible stop prefix is held back).
    Emit(String),
    /// A stop string matched: emit this text before it, then finish.
    Stopped(String),
}

#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopScan {
        self.pending.push_str(delta);
        if self.stops.is_empty() {
            return StopScan::Emit(std::mem::take(&mut self.pending));
        }
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopScan::Stopped(before);
        }
        let held = self.held_suffix_len();
        let cut = self.pending.len() - held;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopScan::Emit(out)
    }

    /// Text held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_suffix_len(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(p.len());
            for len in (best + 1..=max).rev() {
                let start = p.len() - len;
                if p.is_char_boundary(start) && s.starts_with(&p[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_possible_prefixes_and_trims_the_stop() {
        let mut s = StopStrings::new(vec!["\n\n".into(), "END".into()]);
        assert_eq!(s.push("Hello"), StopScan::Emit("Hello".into()));
        assert_eq!(s.push(" E"), StopScan::Emit(" ".into()));
        assert_eq!(s.push("x"), StopScan::Emit("Ex".into()));
        assert_eq!(s.push(" wo\n"), StopScan::Emit(" wo".into()));
        assert_eq!(s.push("\nmore"), StopScan::Stopped("".into()));
    }

    #[test]
    fn stop_inside_one_delta() {
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("abcENDdef"), StopScan::Stopped("abc".into()));
    }

    #[test]
    fn flush_returns_held_text() {
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("abcEN"), StopScan::Emit("abc".into()));
        assert_eq!(s.flush(), "EN");
    }
}
