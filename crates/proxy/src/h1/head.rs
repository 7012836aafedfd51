//! Request heads in, response heads out.
//!
//! Parsing follows RFC 9112 strictly where leniency would let a request be framed differently
//! here than by the backend (request smuggling): a `Transfer-Encoding` other than `chunked` is
//! refused, differing `Content-Length`s are refused, and a request with both framings is read
//! as chunked and closes the connection after its response.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use smallvec::SmallVec;

/// The largest request head accepted (request line and headers).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a request may carry.
const MAX_HEADERS: usize = 100;

/// Where one header line's name and value lie in the head.
#[derive(Clone, Copy)]
struct HeaderRange {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
}

impl HeaderRange {
    fn of(header: &httparse::Header<'_>, base: usize) -> HeaderRange {
        // Offsets within a head of at most MAX_HEAD bytes fit in u32.
        HeaderRange {
            name: (header.name.as_ptr() as usize - base) as u32,
            name_len: header.name.len() as u32,
            value: (header.value.as_ptr() as usize - base) as u32,
            value_len: header.value.len() as u32,
        }
    }

    /// The header line as a name and a value sharing `head`'s buffer.
    fn header(&self, head: &Bytes) -> Result<(HeaderName, HeaderValue), HeadError> {
        let (name_at, value_at) = (self.name as usize, self.value as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + self.name_len as usize])
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(
            head.slice(value_at..value_at + self.value_len as usize),
        )
        .map_err(|_| HeadError::Malformed("invalid header value"))?;
        Ok((name, value))
    }
}

/// How a request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head and what it means for the connection.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) request: Request<()>,
    pub(crate) framing: Framing,
    /// Whether the client lets the connection carry another request after this one.
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// `Upgrade` on an HTTP/1.1 request: a 101 answer hands the connection over.
    pub(crate) wants_upgrade: bool,
    /// `TE: trailers`: the client accepts trailer fields after a chunked response.
    pub(crate) accepts_trailers: bool,
}

/// Why a message head was refused. For a request, each maps to the status sent before
/// closing; for a backend's response, the exchange fails.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HeadError {
    #[error("message head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers")]
    TooLarge,
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
}

impl HeadError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// Parses one request head from the front of `buf`, removing it. `Ok(None)`: more bytes needed.
/// `reuse` is an empty header map whose allocation the request's headers can take.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    reuse: &mut Option<HeaderMap>,
) -> Result<Option<RequestHead>, HeadError> {
    // Byte ranges into `buf`, so the head can be frozen once and every header value shares it.
    // Neither array is initialised up front: that alone cost more than parsing the head.
    let mut ranges: SmallVec<[HeaderRange; MAX_HEADERS]> = SmallVec::new();
    let (len, method, path, minor) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let parsed_len = parsed.parse_with_uninit_headers(buf, &mut headers);
        let Some(len) = head_length(parsed_len, buf.len())? else {
            return Ok(None);
        };
        let base = buf.as_ptr() as usize;
        // Offsets within a head of at most MAX_HEAD bytes fit in u32.
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let method = parsed.method.ok_or(HeadError::Malformed("no method"))?;
        let path = parsed.path.ok_or(HeadError::Malformed("no target"))?;
        let path = (offset(path.as_bytes()) as usize, path.len());
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid method"))?;
        let minor = parsed.version.ok_or(HeadError::Malformed("no version"))?;
        ranges.extend(parsed.headers.iter().map(|h| HeaderRange::of(h, base)));
        (len, method, path, minor)
    };
    let head: Bytes = buf.split_to(len).freeze();
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;

    let http11 = version == Version::HTTP_11;
    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut expect_continue = false;
    let mut wants_upgrade = false;
    let mut accepts_trailers = false;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut headers = reuse.take().unwrap_or_default();
    // Room for what the proxy adds (x-forwarded-for, x-forwarded-proto, filters) without
    // growing the map.
    headers.reserve(ranges.len() + 4);
    for range in &ranges {
        let (name, value) = range.header(&head)?;
        match name {
            header::HOST => hosts += 1,
            header::CONTENT_LENGTH => {
                let length = parse_content_length(value.as_bytes())
                    .ok_or(HeadError::Malformed("invalid Content-Length"))?;
                match content_length {
                    Some(previous) if previous != length => {
                        return Err(HeadError::Malformed("conflicting Content-Length"));
                    }
                    Some(_) => continue,
                    None => content_length = Some(length),
                }
            }
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
                }
                // Only `chunked`, once, may be applied: anything else would have to be decoded
                // before the body could be forwarded without its hop-by-hop coding.
                if !only_chunked(value.as_bytes()) || chunked {
                    return Err(HeadError::UnsupportedCoding);
                }
                transfer_encoding = true;
                chunked = true;
            }
            // Read for persistence whatever it names; kept (the arms below let it through)
            // only when it names other fields.
            header::CONNECTION
                if read_connection(value.as_bytes(), &mut saw_close, &mut keep_alive) =>
            {
                continue;
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::UPGRADE => wants_upgrade = http11,
            header::TE => {
                accepts_trailers |= value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .map(trim)
                    .any(|token| token.eq_ignore_ascii_case(b"trailers"));
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if http11 && hosts == 0 && uri.authority().is_none() {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    let framing = if transfer_encoding {
        if content_length.is_some() {
            // RFC 9112 §6.3: chunked wins, and the connection must not be reused, since a
            // party in front may have framed this message by its length.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::Empty,
            Some(length) => Framing::Length(length),
        }
    };
    if saw_close {
        keep_alive = false;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue: expect_continue && http11 && framing != Framing::Empty,
        wants_upgrade,
        accepts_trailers,
    }))
}

/// The head's length once httparse has seen all of it (`None`: not yet), within the limits.
fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => Ok(Some(len)),
        Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(parse_error_reason(e))),
    }
}

/// Whether a `Transfer-Encoding` value applies `chunked` and nothing else.
fn only_chunked(value: &[u8]) -> bool {
    let mut codings = value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|coding| !coding.is_empty());
    codings
        .next()
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// What a `Connection` field says.
#[derive(Default)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    /// Options other than `close` and `keep-alive` (`upgrade`, or names of hop-by-hop fields).
    others: bool,
}

impl ConnectionOptions {
    fn parse(value: &[u8]) -> ConnectionOptions {
        let mut options = ConnectionOptions::default();
        // The usual value, alone: no splitting.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            options.keep_alive = true;
            return options;
        }
        for token in value.split(|&b| b == b',').map(trim) {
            if token.eq_ignore_ascii_case(b"close") {
                options.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                options.keep_alive = true;
            } else if !token.is_empty() {
                options.others = true;
            }
        }
        options
    }
}

/// Adds a `Connection` field's persistence options to a head's flags. Returns whether the field
/// only decides persistence, which the parsed head carries: it names no other field, so it is
/// left out of the map instead of being stripped from it at every hop (nginx, for one, sends
/// `Connection: keep-alive` with every response).
fn read_connection(value: &[u8], saw_close: &mut bool, keep_alive: &mut bool) -> bool {
    let options = ConnectionOptions::parse(value);
    *saw_close |= options.close;
    *keep_alive |= options.keep_alive;
    !options.others
}

fn parse_error_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// Digits only: `+5`, ` 5` and `5, 5` are refused rather than guessed at.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// What the request said that shapes the response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResponseContext {
    pub(crate) head_request: bool,
    /// A 2xx answer to CONNECT carries no body framing (RFC 9110 §9.3.6).
    pub(crate) connect: bool,
    pub(crate) http10: bool,
}

/// Decides the response's framing from its status, headers and body size.
pub(crate) fn response_framing<B>(
    response: &Response<B>,
    context: ResponseContext,
    exact_size: Option<u64>,
) -> ResponseFraming {
    let status = response.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || context.head_request
        || (context.connect && status.is_success())
    {
        return ResponseFraming::None;
    }
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| parse_content_length(v.as_bytes()));
    match declared.or(exact_size) {
        Some(length) => ResponseFraming::Length(length),
        None if context.http10 => ResponseFraming::UntilClose,
        None => ResponseFraming::Chunked,
    }
}

/// Writes the status line and headers. Framing headers and `Connection` are written from
/// `framing` and `keep_alive`, not copied: they belong to this hop.
pub(crate) fn encode_response<B>(
    response: &Response<B>,
    framing: ResponseFraming,
    keep_alive: bool,
    http10: bool,
    dst: &mut Vec<u8>,
) {
    let status = response.status();
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut has_date = false;
    for (name, value) in response.headers() {
        match *name {
            header::TRANSFER_ENCODING => continue,
            // A HEAD or 304 answer keeps the length the body would have had.
            header::CONTENT_LENGTH if framing != ResponseFraming::None => continue,
            header::CONTENT_LENGTH
                if status.is_informational() || status == StatusCode::NO_CONTENT =>
            {
                continue;
            }
            header::CONNECTION if !switching => continue,
            header::DATE => has_date = true,
            _ => {}
        }
        encode_field(name, value, dst);
    }
    encode_framing(framing, dst);
    if !switching {
        if !keep_alive {
            dst.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            dst.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !has_date {
        dst.extend_from_slice(b"date: ");
        crate::h1::date::write(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// A response sent before any request could be handed on (bad head, too large).
pub(crate) fn encode_error(status: StatusCode, dst: &mut Vec<u8>) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    encode_response(&response, ResponseFraming::Length(0), false, false, dst);
}

/// One `name: value` line.
fn encode_field(name: &HeaderName, value: &HeaderValue, dst: &mut Vec<u8>) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// The framing header a body of known length or chunked coding needs; none otherwise.
fn encode_framing(framing: ResponseFraming, dst: &mut Vec<u8>) {
    match framing {
        ResponseFraming::Length(length) => {
            dst.extend_from_slice(b"content-length: ");
            dst.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::None | ResponseFraming::UntilClose => {}
    }
}

/// Trailer fields after the last chunk.
pub(crate) fn encode_trailers(trailers: &HeaderMap, dst: &mut Vec<u8>) {
    for (name, value) in trailers {
        encode_field(name, value, dst);
    }
}

/// A parsed response head from a backend and what it means for the connection.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) response: Response<()>,
    pub(crate) framing: ResponseFraming,
    /// Whether the backend lets the connection carry another request after this one.
    pub(crate) keep_alive: bool,
}

/// Parses one response head from the front of `buf`, removing it. `Ok(None)`: more bytes
/// needed. Framing follows RFC 9112 §6.3; a body the proxy could not re-frame faithfully (a
/// transfer coding other than `chunked`, differing lengths) is refused rather than guessed at.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut ranges: SmallVec<[HeaderRange; MAX_HEADERS]> = SmallVec::new();
    let (len, code, minor) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parsed_len = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut headers,
        );
        let Some(len) = head_length(parsed_len, buf.len())? else {
            return Ok(None);
        };
        let base = buf.as_ptr() as usize;
        ranges.extend(parsed.headers.iter().map(|h| HeaderRange::of(h, base)));
        let code = parsed.code.ok_or(HeadError::Malformed("no status"))?;
        let minor = parsed.version.ok_or(HeadError::Malformed("no version"))?;
        (len, code, minor)
    };
    let head: Bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Malformed("invalid status"))?;
    let http11 = minor == 1;
    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut content_length: Option<u64> = None;
    let mut invalid_length = false;
    let mut transfer_encoding = false;
    let mut chunked_only = false;
    // Sized to the fields received, not beyond: a map of up to six fields (624 bytes) is
    // within the sizes glibc caches per thread (1,032 bytes), where one reserving room for
    // two more (1,248 bytes) took its slower shared path on every response.
    let mut headers = HeaderMap::with_capacity(ranges.len());
    for range in &ranges {
        let (name, value) = range.header(&head)?;
        match name {
            header::CONTENT_LENGTH => match parse_content_length(value.as_bytes()) {
                Some(length) if content_length.is_none_or(|known| known == length) => {
                    content_length = Some(length);
                }
                _ => invalid_length = true,
            },
            header::TRANSFER_ENCODING => {
                // A second field means a second coding.
                chunked_only = !transfer_encoding && only_chunked(value.as_bytes());
                transfer_encoding = true;
            }
            // Read for persistence whatever it names; kept (the arms below let it through)
            // only when it names other fields.
            header::CONNECTION
                if read_connection(value.as_bytes(), &mut saw_close, &mut keep_alive) =>
            {
                continue;
            }
            _ => {}
        }
        headers.append(name, value);
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        ResponseFraming::None
    } else if transfer_encoding {
        if !chunked_only || !http11 {
            return Err(HeadError::UnsupportedCoding);
        }
        if content_length.is_some() || invalid_length {
            // Chunked wins (RFC 9112 §6.3), but the connection is not trusted with another
            // exchange.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        ResponseFraming::Chunked
    } else if invalid_length {
        return Err(HeadError::Malformed(
            "invalid or conflicting Content-Length",
        ));
    } else if let Some(length) = content_length {
        ResponseFraming::Length(length)
    } else {
        keep_alive = false;
        ResponseFraming::UntilClose
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *response.headers_mut() = headers;
    Ok(Some(ResponseHead {
        response,
        framing,
        keep_alive: keep_alive && !saw_close,
    }))
}

/// Writes an HTTP/1.1 request line and headers for a backend: `Host` first, then the headers
/// (framing headers and any `Host` among them are this hop's and written from the arguments).
pub(crate) fn encode_request(
    method: &Method,
    target: &str,
    host: &[u8],
    headers: &HeaderMap,
    framing: ResponseFraming,
    dst: &mut Vec<u8>,
) {
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    dst.extend_from_slice(host);
    dst.extend_from_slice(b"\r\n");
    let mut declared_length = false;
    for (name, value) in headers {
        match *name {
            header::HOST | header::TRANSFER_ENCODING => continue,
            header::CONTENT_LENGTH => {
                declared_length = true;
                continue;
            }
            _ => {}
        }
        encode_field(name, value, dst);
    }
    match framing {
        ResponseFraming::Length(_) | ResponseFraming::Chunked => encode_framing(framing, dst),
        // No body: a length of 0 is stated where the method defines a body (RFC 9110 §8.6) or
        // the client stated one.
        ResponseFraming::None | ResponseFraming::UntilClose => {
            if declared_length || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                dst.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    dst.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(raw), &mut None)
    }

    fn head(raw: &str) -> RequestHead {
        parse(raw).unwrap().unwrap()
    }

    /// A typical backend answer (nginx's five fields) gets a header map small enough for
    /// glibc's per-thread cache, and a longer one grows to hold every field.
    #[test]
    fn a_response_header_map_is_sized_to_its_fields() {
        let fields = "Server: nginx\r\nDate: Sat, 05 Dec 2026 12:00:00 GMT\r\n\
                      Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n";
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{fields}\r\n").as_str());
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        // `Connection: keep-alive` decided persistence and is not kept.
        assert_eq!(head.response.headers().len(), 4);
        assert!(head.response.headers().capacity() <= 6);

        let many: String = (0..20).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{fields}{many}\r\n").as_str());
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.response.headers().len(), 24);
        assert_eq!(head.response.headers()["x-19"], "19");
    }

    /// A `Connection` field that only decides persistence is read and left out of the map;
    /// one naming anything else stays, for the hop-by-hop strip to act on.
    #[test]
    fn connection_fields_that_only_decide_persistence_are_not_kept() {
        let response = |connection: &str| {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n{connection}\r\n");
            parse_response(&mut BytesMut::from(raw.as_str()), false)
                .unwrap()
                .unwrap()
        };
        let closing = response("Connection: Close\r\n");
        assert!(!closing.keep_alive);
        assert!(closing.response.headers().get(header::CONNECTION).is_none());
        let naming = response("Connection: keep-alive\r\nConnection: close, X-Hop\r\n");
        assert!(!naming.keep_alive);
        let kept: Vec<_> = naming
            .response
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .collect();
        assert_eq!(kept, ["close, X-Hop"]);

        let request = |connection: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{connection}\r\n");
            parse_request(&mut BytesMut::from(raw.as_str()), &mut None)
                .unwrap()
                .unwrap()
        };
        let keeping = request("Connection: keep-alive\r\n");
        assert!(keeping.keep_alive);
        assert!(keeping.request.headers().get(header::CONNECTION).is_none());
        let upgrading = request("Connection: Upgrade\r\nUpgrade: websocket\r\n");
        assert!(upgrading.wants_upgrade);
        assert_eq!(upgrading.request.headers()[header::CONNECTION], "Upgrade");
    }

    #[test]
    fn parses_a_request_and_leaves_what_follows() {
        let mut buf = BytesMut::from(
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nx-a: 2\r\n\r\nNEXT",
        );
        let mut reuse = Some(HeaderMap::with_capacity(32));
        let head = parse_request(&mut buf, &mut reuse).unwrap().unwrap();
        assert!(reuse.is_none());
        assert_eq!(&buf[..], b"NEXT");
        let req = head.request;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/a");
        assert_eq!(req.uri().query(), Some("b=1"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "example.com");
        let values: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert!(!head.wants_upgrade);
    }

    #[test]
    fn partial_heads_wait_for_more_and_huge_ones_are_refused() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(parse(&huge).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse(&many).unwrap_err().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn body_framing() {
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(12));
        let h =
            head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(
            h.request.headers().get_all("content-length").iter().count(),
            1
        );
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        // Both: chunked wins, Content-Length goes, and the connection closes afterwards.
        let h = head(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.request.headers().get("content-length").is_none());
        assert!(!h.keep_alive);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        ] {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{raw:?}: {err}");
        }
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.status(), StatusCode::NOT_IMPLEMENTED, "{raw:?}: {err}");
        }
    }

    #[test]
    fn connection_semantics_by_version() {
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(
            !head(
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
            )
            .keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let h = head(
            "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(h.wants_upgrade);
        assert!(!head("GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n").wants_upgrade);
        let h =
            head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(h.expect_continue);
        // Nothing to continue with.
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(
            head("GET / HTTP/1.1\r\nHost: a\r\nTE: deflate, trailers\r\n\r\n").accepts_trailers
        );
        // An absolute target stands in for Host.
        let h = head("GET http://example.com/x HTTP/1.1\r\n\r\n");
        assert_eq!(h.request.uri().authority().unwrap(), "example.com");
    }

    fn encoded(
        response: &Response<()>,
        framing: ResponseFraming,
        keep_alive: bool,
        http10: bool,
    ) -> String {
        let mut dst = Vec::new();
        encode_response(response, framing, keep_alive, http10, &mut dst);
        String::from_utf8(dst).unwrap()
    }

    #[test]
    fn response_heads_carry_this_hops_framing() {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert("x-a", HeaderValue::from_static("1"));
        response
            .headers_mut()
            .insert("date", HeaderValue::from_static("then"));
        response
            .headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        response
            .headers_mut()
            .insert("connection", HeaderValue::from_static("keep-alive"));
        let head = encoded(&response, ResponseFraming::Length(13), true, false);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: then\r\ncontent-length: 13\r\n\r\n"
        );
        let head = encoded(&response, ResponseFraming::Chunked, false, false);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: then\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let head = encoded(&response, ResponseFraming::Length(0), true, true);
        assert!(
            head.ends_with("content-length: 0\r\nconnection: keep-alive\r\n\r\n"),
            "{head}"
        );
        // A date is added when the response has none.
        let head = encoded(&Response::new(()), ResponseFraming::Length(0), true, false);
        assert!(
            head.contains("\r\ndate: ") && head.contains(" GMT\r\n"),
            "{head}"
        );
    }

    #[test]
    fn response_framing_by_status_method_and_size() {
        let plain = ResponseContext {
            head_request: false,
            connect: false,
            http10: false,
        };
        let mut response = Response::new(());
        assert_eq!(
            response_framing(&response, plain, Some(5)),
            ResponseFraming::Length(5)
        );
        assert_eq!(
            response_framing(&response, plain, None),
            ResponseFraming::Chunked
        );
        let http10 = ResponseContext {
            head_request: false,
            connect: false,
            http10: true,
        };
        let connect = ResponseContext {
            head_request: false,
            connect: true,
            http10: false,
        };
        assert_eq!(
            response_framing(&response, connect, None),
            ResponseFraming::None
        );
        assert_eq!(
            response_framing(&response, http10, None),
            ResponseFraming::UntilClose
        );
        let head = ResponseContext {
            head_request: true,
            connect: false,
            http10: false,
        };
        assert_eq!(
            response_framing(&response, head, Some(5)),
            ResponseFraming::None
        );
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from_static("7"));
        assert_eq!(
            response_framing(&response, plain, None),
            ResponseFraming::Length(7)
        );
        // A HEAD answer keeps the declared length.
        let text = encoded(&response, ResponseFraming::None, true, false);
        assert!(text.contains("content-length: 7\r\n"), "{text}");
        *response.status_mut() = StatusCode::NO_CONTENT;
        assert_eq!(
            response_framing(&response, plain, Some(5)),
            ResponseFraming::None
        );
        let text = encoded(&response, ResponseFraming::None, true, false);
        assert!(!text.contains("content-length"), "{text}");
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        let text = encoded(&response, ResponseFraming::None, true, false);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: upgrade\r\n"), "{text}");
    }
}
