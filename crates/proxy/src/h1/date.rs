//! The `Date` header, formatted once per second per thread instead of once per response.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT` is 29 bytes.
const LEN: usize = 29;

struct Cached {
    second: u64,
    text: [u8; LEN],
}

thread_local! {
    static CACHE: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, text: [0; LEN] }) };
}

/// Appends the current date in IMF-fixdate form.
pub(crate) fn write(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.second != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == LEN {
                cache.text.copy_from_slice(text.as_bytes());
                cache.second = second;
            } else {
                dst.extend_from_slice(text.as_bytes());
                return;
            }
        }
        dst.extend_from_slice(&cache.text);
    });
}

/// The current date as a header value, for responses this module does not write.
pub(crate) fn header_value() -> Option<http::HeaderValue> {
    let mut text = Vec::with_capacity(LEN);
    write(&mut text);
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_an_http_date() {
        let mut dst = Vec::new();
        super::write(&mut dst);
        let text = String::from_utf8(dst).unwrap();
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 5, "{text}");
        let value = super::header_value().unwrap();
        let parsed = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 5, "{value:?}");
    }
}
