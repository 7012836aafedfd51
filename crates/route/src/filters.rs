//! Pure request/response transformations for the filters of a matched rule.

mod cors;
mod headers;
mod redirect;

use strait_config::{Cors, HttpFilter, RequestMirror, RequestRedirect, UrlRewrite};

pub use cors::{CorsOutcome, cors};
pub use headers::HeaderEdits;
pub use redirect::{RequestTarget, redirect_location, rewrite_path};

/// A filter ready to run: the config filter, with what can be parsed ahead of requests parsed
/// when the route table is built.
#[derive(Clone, Debug)]
pub enum Filter {
    RequestHeaderModifier(HeaderEdits),
    ResponseHeaderModifier(HeaderEdits),
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(RequestMirror),
    Cors(Cors),
}

impl From<&HttpFilter> for Filter {
    fn from(filter: &HttpFilter) -> Filter {
        match filter {
            HttpFilter::RequestHeaderModifier(m) => {
                Filter::RequestHeaderModifier(HeaderEdits::compile(m))
            }
            HttpFilter::ResponseHeaderModifier(m) => {
                Filter::ResponseHeaderModifier(HeaderEdits::compile(m))
            }
            HttpFilter::RequestRedirect(r) => Filter::RequestRedirect(r.clone()),
            HttpFilter::UrlRewrite(r) => Filter::UrlRewrite(r.clone()),
            HttpFilter::RequestMirror(m) => Filter::RequestMirror(m.clone()),
            HttpFilter::Cors(c) => Filter::Cors(c.clone()),
        }
    }
}
