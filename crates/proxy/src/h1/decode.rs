//! Request body framing: a known length or chunked transfer coding.
//!
//! Data is split off the connection's read buffer without copying. Chunk lines must end in
//! CRLF (a bare LF is refused, as a lenient reader could frame the body differently from the
//! backend), and chunk extensions and trailer fields are bounded and then dropped: they are
//! hop-by-hop.

use bytes::{Bytes, BytesMut};

use crate::h1::head::Framing;

/// Chunk extensions on one chunk line, and all trailer fields together, may not exceed this.
const MAX_CHUNK_METADATA: usize = 16 * 1024;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("invalid chunked encoding: {0}")]
    Chunked(&'static str),
    #[error("connection closed before the request body ended")]
    Incomplete,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The body has ended.
    Done,
}

#[derive(Debug)]
pub(crate) enum Decoder {
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    metadata: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size {
        digits: u8,
    },
    /// Whitespace or extensions after the size, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty => Decoder::Length(0),
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked {
                state: State::Size { digits: 0 },
                size: 0,
                metadata: 0,
            }),
        }
    }

    /// Bytes still expected, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(_) => None,
        }
    }

    /// Takes the next piece of body from the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::Done),
            Decoder::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                *remaining -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(chunked) => chunked.decode(buf),
        }
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let mut used = 0;
        let result = loop {
            if self.state == State::Done {
                break Ok(Decoded::Done);
            }
            if self.state == State::Data {
                if used == buf.len() {
                    break Ok(Decoded::NeedMore);
                }
                let available = buf.len() - used;
                let take = usize::try_from(self.size).map_or(available, |s| s.min(available));
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                let _ = buf.split_to(used);
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            let Some(&byte) = buf.get(used) else {
                break Ok(Decoded::NeedMore);
            };
            used += 1;
            if let Err(e) = self.step(byte) {
                break Err(e);
            }
        };
        let _ = buf.split_to(used);
        result
    }

    fn step(&mut self, byte: u8) -> Result<(), DecodeError> {
        self.state = match (self.state, byte) {
            (State::Size { digits }, b) if b.is_ascii_hexdigit() => {
                if digits == 16 {
                    return Err(DecodeError::Chunked("chunk size too large"));
                }
                let digit = (b as char).to_digit(16).unwrap_or(0);
                self.size = self.size << 4 | u64::from(digit);
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => return Err(DecodeError::Chunked("no chunk size")),
            (State::Size { .. } | State::Extension, b'\r') => State::SizeLf,
            (State::Size { .. }, b' ' | b'\t' | b';') => {
                self.metadata = 1;
                State::Extension
            }
            (State::Size { .. }, _) => return Err(DecodeError::Chunked("invalid chunk size")),
            (State::Extension, b'\n') => return Err(DecodeError::Chunked("bare LF")),
            (State::Extension, _) => {
                self.metadata += 1;
                if self.metadata > MAX_CHUNK_METADATA {
                    return Err(DecodeError::Chunked("chunk extension too long"));
                }
                State::Extension
            }
            (State::SizeLf, b'\n') => {
                self.metadata = 0;
                if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { digits: 0 },
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::Trailer, b'\n') => {
                return Err(DecodeError::Chunked("bare LF"));
            }
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) => {
                self.metadata += 1;
                if self.metadata > MAX_CHUNK_METADATA {
                    return Err(DecodeError::Chunked("trailers too long"));
                }
                State::Trailer
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            _ => return Err(DecodeError::Chunked("missing CRLF")),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` `step` bytes at a time; returns the body and what was left after it.
    fn decode_all(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Done => return Ok((body, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(DecodeError::Incomplete);
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn length_delimited_bodies_stop_at_their_length() {
        for step in [1, 3, 100] {
            let (body, rest) = decode_all(Framing::Length(5), b"hello GET", step).unwrap();
            assert_eq!(body, b"hello");
            assert_eq!(&rest[..], &b"hello GET"[5..][..rest.len()]);
        }
        assert_eq!(
            decode_all(Framing::Length(5), b"hel", 10),
            Err(DecodeError::Incomplete)
        );
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let input =
            b"5\r\nhello\r\n6;name=value\r\n world\r\nA \r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 7, 1000] {
            let (body, rest) = decode_all(Framing::Chunked, input, step).unwrap();
            assert_eq!(body, b"hello world0123456789", "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        let (body, _) = decode_all(Framing::Chunked, b"0\r\n\r\n", 1).unwrap();
        assert!(body.is_empty());
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for input in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n\n",
        ] {
            let result = decode_all(Framing::Chunked, input, 1);
            assert!(
                matches!(result, Err(DecodeError::Chunked(_))),
                "{input:?}: {result:?}"
            );
        }
        let long = format!("1;{}\r\n", "a".repeat(MAX_CHUNK_METADATA));
        assert!(matches!(
            decode_all(Framing::Chunked, long.as_bytes(), 4096),
            Err(DecodeError::Chunked("chunk extension too long"))
        ));
        assert_eq!(
            decode_all(Framing::Chunked, b"5\r\nhel", 100),
            Err(DecodeError::Incomplete)
        );
    }
}
