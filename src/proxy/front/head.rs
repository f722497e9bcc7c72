//! Where a request head ends and whether it keeps within the limits, decided on the bytes as
//! they arrive — before Pingora parses anything, so that an oversized head is answered `431`
//! instead of Pingora's `400` (too many fields) or being accepted (up to 1 MB).
//!
//! The scan is incremental: bytes that arrive one at a time are each looked at once.

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// More bytes are needed.
    Incomplete,
    /// The head ends after this many bytes (any more belong to the body or the next request).
    Complete(usize),
    /// The head is, or will be, larger than the byte limit.
    TooLarge,
    /// The head has more header fields than the limit.
    TooManyFields,
}

/// The scan of one request head.
#[derive(Debug)]
pub(crate) struct HeadScanner {
    max_bytes: usize,
    max_fields: usize,
    /// How far the buffer has been looked at.
    pos: usize,
    /// Where the current line starts (`None` while skipping empty lines before the request).
    line_start: Option<usize>,
    /// Lines ended so far: the request line, then one per field.
    lines: usize,
}

impl HeadScanner {
    pub(crate) fn new(max_bytes: usize, max_fields: usize) -> Self {
        HeadScanner {
            max_bytes,
            max_fields,
            pos: 0,
            line_start: None,
            lines: 0,
        }
    }

    /// Looks at `buf` — everything received so far, of which the first bytes were seen by
    /// earlier calls.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Scan {
        if self.line_start.is_none() {
            // RFC 9112 §2.2: empty lines before the request line are ignored.
            match buf[self.pos..]
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
            {
                Some(at) => {
                    self.pos += at;
                    self.line_start = Some(self.pos);
                }
                None => {
                    self.pos = buf.len();
                    return self.incomplete(buf);
                }
            }
        }
        let mut start = self.line_start.unwrap_or(self.pos);
        // Line ends found with memchr (SIMD): a head is a few KB of long cookie lines.
        for nl in memchr::memchr_iter(b'\n', &buf[self.pos..]) {
            let i = self.pos + nl;
            let line = &buf[start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                self.pos = i + 1;
                if i + 1 > self.max_bytes {
                    return Scan::TooLarge;
                }
                return Scan::Complete(i + 1);
            }
            self.lines += 1;
            if self.lines > self.max_fields + 1 {
                return Scan::TooManyFields;
            }
            start = i + 1;
        }
        self.line_start = Some(start);
        self.pos = buf.len();
        self.incomplete(buf)
    }

    fn incomplete(&self, buf: &[u8]) -> Scan {
        if buf.len() >= self.max_bytes {
            return Scan::TooLarge;
        }
        Scan::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(head: &[u8], max_bytes: usize, max_fields: usize) -> Scan {
        HeadScanner::new(max_bytes, max_fields).scan(head)
    }

    fn dribbled(head: &[u8], max_bytes: usize, max_fields: usize) -> Scan {
        let mut s = HeadScanner::new(max_bytes, max_fields);
        for n in 1..=head.len() {
            match s.scan(&head[..n]) {
                Scan::Incomplete => continue,
                done => return done,
            }
        }
        Scan::Incomplete
    }

    #[test]
    fn a_head_ends_at_the_empty_line_crlf_or_lf() {
        let h = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(whole(h, 1000, 10), Scan::Complete(h.len() - 4));
        assert_eq!(dribbled(h, 1000, 10), Scan::Complete(h.len() - 4));
        let h = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(whole(h, 1000, 10), Scan::Complete(h.len()));
        assert_eq!(
            whole(b"GET / HTTP/1.1\r\nHost: a\r\n", 1000, 10),
            Scan::Incomplete
        );
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let h = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(whole(h, 1000, 10), Scan::Complete(h.len()));
    }

    #[test]
    fn too_many_fields() {
        let mut h = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..3 {
            h.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        assert_eq!(whole(&h, 10_000, 3), Scan::Complete(h.len()));
        assert_eq!(whole(&h, 10_000, 2), Scan::TooManyFields);
        assert_eq!(dribbled(&h, 10_000, 2), Scan::TooManyFields);
    }

    #[test]
    fn too_large_complete_or_not() {
        let h = b"GET / HTTP/1.1\r\nHost: aaaaaaaaaa\r\n\r\n";
        assert_eq!(whole(h, h.len(), 10), Scan::Complete(h.len()));
        assert_eq!(whole(h, h.len() - 1, 10), Scan::TooLarge);
        assert_eq!(dribbled(h, h.len() - 1, 10), Scan::TooLarge);
        // An unfinished head already at the limit cannot end within it.
        assert_eq!(whole(&[b'a'; 64], 64, 10), Scan::TooLarge);
        assert_eq!(whole(&[b'a'; 63], 64, 10), Scan::Incomplete);
    }

    proptest::proptest! {
        /// However the bytes arrive, the scan decides the same as on the whole (which limit a
        /// refused head hits first may differ: both answer `431`).
        #[test]
        fn arrival_in_pieces_decides_the_same(
            head in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b'\r'),
                    proptest::prelude::any::<u8>()
                ],
                0..300,
            ),
            cuts in proptest::collection::vec(0usize..300, 0..10),
            max_bytes in 1usize..400,
            max_fields in 0usize..10,
        ) {
            let all = whole(&head, max_bytes, max_fields);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= head.len()).collect();
            cuts.push(head.len());
            cuts.sort_unstable();
            let mut s = HeadScanner::new(max_bytes, max_fields);
            let mut got = Scan::Incomplete;
            for c in cuts {
                got = s.scan(&head[..c]);
                if got != Scan::Incomplete {
                    break;
                }
            }
            let refused = |s: Scan| matches!(s, Scan::TooLarge | Scan::TooManyFields);
            if refused(all) {
                proptest::prop_assert!(refused(got), "{got:?} vs {all:?}");
            } else {
                proptest::prop_assert_eq!(got, all);
            }
        }
    }
}
