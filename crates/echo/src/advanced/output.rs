//! Reading `strait-echo client` output (and echo-advanced reply bodies) back into values.

/// One response as the client printed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoResponse {
    /// `StatusCode=`; 0 when the request failed before a response (then `Error=` says why).
    pub status: u16,
    /// `ResponseHeader=Name:value` lines, in order.
    pub response_headers: Vec<(String, String)>,
    /// Every other `Key=Value` line (the echoed body, `Error=`), in order; `RequestHeader`
    /// entries keep their `Name:value` text as the value.
    pub fields: Vec<(String, String)>,
}

impl EchoResponse {
    /// The first value of `key` (`Hostname`, `Host`, `URL`, `Error`, ...).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value the backend saw for request header `name` (case-insensitive), joined with
    /// `,` as the mesh suite compares them; `None` when the header was absent.
    pub fn request_header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .fields
            .iter()
            .filter(|(k, _)| k == "RequestHeader")
            .filter_map(|(_, v)| {
                let (n, value) = v.split_once(':')?;
                n.eq_ignore_ascii_case(name).then_some(value)
            })
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The last value of response header `name` (case-insensitive), as the suite reads it.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits client output into responses. A response starts at each `StatusCode=` line; blank
/// lines are ignored, and so are Istio's `[N]` / `[N body]` line prefixes. Lines before the
/// first `StatusCode=` (a bare reply body) form a response with status 0.
pub fn parse_client_output(text: &str) -> Vec<EchoResponse> {
    let mut out: Vec<EchoResponse> = Vec::new();
    for line in text.lines() {
        let line = strip_istio_prefix(line.trim_end_matches('\r'));
        if line.trim().is_empty() {
            continue;
        }
        if let Some(code) = line.strip_prefix("StatusCode=") {
            out.push(EchoResponse {
                status: code.trim().parse().unwrap_or(0),
                ..EchoResponse::default()
            });
            continue;
        }
        if out.is_empty() {
            out.push(EchoResponse::default());
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        if let Some(header) = line.strip_prefix("ResponseHeader=") {
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            current
                .response_headers
                .push((name.to_string(), value.to_string()));
        } else if let Some((key, value)) = line.split_once('=') {
            current.fields.push((key.to_string(), value.to_string()));
        }
    }
    out
}

/// The `Key=Value` lines of one echo-advanced reply body.
pub fn parse_fields(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|line| line.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `[3] StatusCode=200` and `[3 body] Host=x` → the text after the bracket.
fn strip_istio_prefix(line: &str) -> &str {
    let Some(rest) = line.strip_prefix('[') else {
        return line;
    };
    let Some((inside, after)) = rest.split_once(']') else {
        return line;
    };
    let index = inside.strip_suffix(" body").unwrap_or(inside);
    if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
        after.strip_prefix(' ').unwrap_or(after)
    } else {
        line
    }
}
