//! What the length-prefixed protocols (PostgreSQL, MySQL) share: a header
//! of a few bytes that says how long the body is, the body's first bytes
//! kept and the rest skipped by count, through segments whose tails may be
//! uncaptured. A header in uncaptured bytes loses the stream, until the
//! owner resynchronises it.

use crate::stream::{Segment, Stamp};

/// Longest header walked.
pub(crate) const MAX_HEADER: usize = 5;

/// What a protocol tells the walk about its headers.
pub(crate) trait Header {
    /// How many bytes the next header has (1 to [`MAX_HEADER`]).
    fn header_len(&self) -> usize;
    /// A complete header: its body's length and how much of the body to
    /// keep, or `None` when these bytes cannot be a header.
    fn body(&mut self, header: &[u8]) -> Option<(u64, usize)>;
}

/// One message, as walked.
pub(crate) struct Walked<'a> {
    pub header: &'a [u8],
    /// The body's first bytes, up to what [`Header::body`] asked to keep.
    pub body: &'a [u8],
    /// Some bytes that were to be kept were not captured.
    pub cut: bool,
    pub first_at: Stamp,
    pub last_at: Stamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Collecting a header, `have` bytes of `need` so far.
    Header {
        have: usize,
        need: usize,
    },
    /// Inside a body, `remaining` bytes to go.
    Body {
        remaining: u64,
    },
    Lost,
}

/// Walks one direction of one connection.
#[derive(Debug)]
pub(crate) struct Walk {
    state: State,
    header: [u8; MAX_HEADER],
    header_len: usize,
    keep: Vec<u8>,
    keep_max: usize,
    cut: bool,
    first_at: Stamp,
}

impl Walk {
    pub fn new() -> Self {
        Walk {
            state: State::Header { have: 0, need: 0 },
            header: [0; MAX_HEADER],
            header_len: 0,
            keep: Vec::new(),
            keep_max: 0,
            cut: false,
            first_at: Stamp::default(),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Gives up: the stream can no longer be followed.
    pub fn lose(&mut self) {
        self.state = State::Lost;
        self.keep.clear();
    }

    /// Starts over: a message begins with the next byte.
    pub fn resync(&mut self) {
        self.state = State::Header { have: 0, need: 0 };
        self.keep.clear();
    }

    pub fn feed<H: Header>(
        &mut self,
        h: &mut H,
        seg: Segment<'_>,
        mut on: impl FnMut(&mut H, Walked<'_>),
    ) {
        let captured = seg.bytes.len().min(seg.len as usize);
        let bytes = &seg.bytes[..captured];
        let mut pos = 0;
        while pos < bytes.len() {
            match self.state {
                State::Lost => return,
                State::Header { have, need } => {
                    // How long a header is can depend on the message before.
                    let need = if have == 0 {
                        self.first_at = seg.stamp;
                        h.header_len().clamp(1, MAX_HEADER)
                    } else {
                        need
                    };
                    let take = (need - have).min(bytes.len() - pos);
                    self.header[have..have + take].copy_from_slice(&bytes[pos..pos + take]);
                    pos += take;
                    if have + take < need {
                        self.state = State::Header {
                            have: have + take,
                            need,
                        };
                        continue;
                    }
                    let Some((len, keep_max)) = h.body(&self.header[..need]) else {
                        self.lose();
                        return;
                    };
                    self.header_len = need;
                    self.keep.clear();
                    self.cut = false;
                    self.keep_max = keep_max;
                    self.state = State::Body { remaining: len };
                    if len == 0 {
                        self.finish(h, seg.stamp, &mut on);
                    }
                }
                State::Body { remaining } => {
                    let take = remaining.min((bytes.len() - pos) as u64) as usize;
                    let room = self.keep_max.saturating_sub(self.keep.len());
                    self.keep
                        .extend_from_slice(&bytes[pos..pos + take.min(room)]);
                    pos += take;
                    self.state = State::Body {
                        remaining: remaining - take as u64,
                    };
                    if remaining == take as u64 {
                        self.finish(h, seg.stamp, &mut on);
                    }
                }
            }
        }
        let unseen = seg.len.saturating_sub(captured as u64);
        if unseen == 0 {
            return;
        }
        match self.state {
            State::Body { remaining } if unseen <= remaining => {
                if self.keep.len() < self.keep_max {
                    self.cut = true;
                }
                self.state = State::Body {
                    remaining: remaining - unseen,
                };
                if remaining == unseen {
                    self.finish(h, seg.stamp, &mut on);
                }
            }
            State::Lost => {}
            // A header, or a body's end and what follows, went uncaptured.
            _ => self.lose(),
        }
    }

    fn finish<H>(&mut self, h: &mut H, at: Stamp, on: &mut impl FnMut(&mut H, Walked<'_>)) {
        self.state = State::Header { have: 0, need: 0 };
        on(
            h,
            Walked {
                header: &self.header[..self.header_len],
                body: &self.keep,
                cut: self.cut,
                first_at: self.first_at,
                last_at: at,
            },
        );
    }
}
